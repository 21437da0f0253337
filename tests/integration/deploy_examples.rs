//! The deploy examples (`deploy/kubernetes/`, `deploy/systemd/`) against what the code needs: every queue of the
//! job registry served, the configuration each role needs in production (`Config::production_gaps`), grace
//! periods longer than each role's drain (`Config::stop_within`), migrations before every pod, no Secret among
//! the applied files, and autoscaling that ignores paused queues and stays within the connection budget.
//! Nothing is started: the manifests and unit files are read, and their commands and environments are parsed
//! by the binary's own command line and configuration code.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Parser as _;
use createimage2::cli::{Cli, Command};
use jobs::config::{Config, DatabaseConfig, Role};
use serde_yaml_ng::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The YAML documents of a file (split at `---` lines), leaving out documents of comments only.
fn documents(path: &Path) -> Vec<Value> {
    let mut chunks = vec![String::new()];
    for line in read(path).lines() {
        if line.trim_end() == "---" {
            chunks.push(String::new());
        } else {
            let chunk = chunks.last_mut().unwrap();
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    chunks
        .into_iter()
        .filter(|chunk| {
            chunk.lines().any(|line| {
                let line = line.trim();
                !line.is_empty() && !line.starts_with('#')
            })
        })
        .map(|chunk| {
            serde_yaml_ng::from_str(&chunk)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        })
        .collect()
}

fn items(value: &Value) -> &[Value] {
    value.as_sequence().map_or(&[], Vec::as_slice)
}

/// A scalar as the string Kubernetes (or the environment) would see.
fn scalar(value: &Value, what: &str) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        other => panic!("{what}: expected a scalar, got {other:?}"),
    }
}

fn string_map(value: &Value, what: &str) -> BTreeMap<String, String> {
    value
        .as_mapping()
        .unwrap_or_else(|| panic!("{what}: expected a mapping"))
        .iter()
        .map(|(key, value)| (scalar(key, what), scalar(value, what)))
        .collect()
}

fn strings(value: &Value, what: &str) -> Vec<String> {
    items(value).iter().map(|item| scalar(item, what)).collect()
}

/// The role a long-running process plays, from its command line as the binary parses it.
enum Kind {
    Api,
    Worker { queues: Vec<String> },
    Scheduler,
}

impl Kind {
    fn parse(args: &[String], what: &str) -> Self {
        let cli = Cli::try_parse_from(
            std::iter::once("createimage2").chain(args.iter().map(String::as_str)),
        )
        .unwrap_or_else(|error| {
            panic!(
                "{what}: `createimage2 {}` does not parse: {error}",
                args.join(" ")
            )
        });
        match cli.command {
            Command::Api => Self::Api,
            Command::Scheduler => Self::Scheduler,
            Command::Worker {
                queues,
                concurrency,
            } => {
                let registry = jobs::kinds::registry();
                worker::plans(&registry, &queues, &concurrency).unwrap_or_else(|error| {
                    panic!("{what}: the worker would not start: {error:#}")
                });
                assert_ne!(
                    queues.trim(),
                    "all",
                    "{what} serves `all` queues: name them, so that each queue has one worker fleet"
                );
                Self::Worker {
                    queues: queues
                        .split(',')
                        .map(|queue| queue.trim().to_owned())
                        .filter(|queue| !queue.is_empty())
                        .collect(),
                }
            }
            other => panic!("{what}: `{other:?}` is not a long-running role"),
        }
    }

    fn role(&self) -> Role {
        match self {
            Self::Api => Role::Api,
            Self::Worker { .. } => Role::Worker,
            Self::Scheduler => Role::Scheduler,
        }
    }

    fn queues(&self) -> Option<&[String]> {
        match self {
            Self::Worker { queues } => Some(queues),
            _ => None,
        }
    }
}

/// Parses the configuration of a role and requires everything production needs of it.
fn production_config(what: &str, kind: &Kind, env: &HashMap<String, String>) -> Config {
    let config = Config::from_source(env)
        .unwrap_or_else(|error| panic!("{what}: the configuration does not load: {error}"));
    let gaps = config.production_gaps(kind.role());
    assert!(
        gaps.is_empty(),
        "{what} lacks what production needs: {}",
        gaps.join(", ")
    );
    config
}

/// Every queue of the registry is in exactly one fleet's queue list, and no fleet names an unknown queue.
fn assert_each_queue_served_once(fleets: &[(String, Vec<String>)], what: &str) {
    let registry = jobs::kinds::registry();
    let known: BTreeSet<&str> = registry.queues().collect();
    assert!(!known.is_empty(), "the registry lists no queue");
    let mut servers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (fleet, queues) in fleets {
        for queue in queues {
            servers
                .entry(queue.as_str())
                .or_default()
                .push(fleet.as_str());
        }
    }
    let missing: Vec<&str> = known
        .iter()
        .copied()
        .filter(|queue| !servers.contains_key(queue))
        .collect();
    let unknown: Vec<&str> = servers
        .keys()
        .copied()
        .filter(|queue| !known.contains(queue))
        .collect();
    let twice: BTreeMap<&str, &Vec<&str>> = servers
        .iter()
        .filter(|(_, fleets)| fleets.len() > 1)
        .map(|(queue, fleets)| (*queue, fleets))
        .collect();
    assert!(
        missing.is_empty() && unknown.is_empty() && twice.is_empty(),
        "each queue must be served by exactly one {what}:\n  served by none: {missing:?}\n  unknown to the \
         registry: {unknown:?}\n  served twice: {twice:?}"
    );
}

// ----- Kubernetes ------------------------------------------------------------------------------------------

const SECRET_NAME: &str = "createimage2";

struct Kubernetes {
    /// Every object of the files applied from `deploy/kubernetes/`, with its file name, in the order the files
    /// are applied (their names).
    applied: Vec<(String, Value)>,
    /// `deploy/kubernetes/out-of-band/secret.example.yaml`: the keys of the Secret created out of band.
    example_secret: Value,
}

/// A Deployment of the examples, its main container and the role it plays.
struct Deployment<'a> {
    name: String,
    file: &'a str,
    object: &'a Value,
    container: &'a Value,
    kind: Kind,
    env: HashMap<String, String>,
}

impl Kubernetes {
    fn load() -> Self {
        let dir = deploy_dir().join("kubernetes");
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                path.is_file()
                    && matches!(
                        path.extension().and_then(|extension| extension.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
            })
            .collect();
        files.sort();
        let applied = files
            .iter()
            .flat_map(|path| {
                let file = path.file_name().unwrap().to_string_lossy().into_owned();
                documents(path)
                    .into_iter()
                    .map(move |object| (file.clone(), object))
            })
            .collect();
        let mut secrets = documents(&dir.join("out-of-band/secret.example.yaml"));
        assert_eq!(
            secrets.len(),
            1,
            "out-of-band/secret.example.yaml holds one Secret"
        );
        Self {
            applied,
            example_secret: secrets.remove(0),
        }
    }

    fn objects<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
        self.applied
            .iter()
            .filter(move |(_, object)| object["kind"].as_str() == Some(kind))
            .map(|(file, object)| (file.as_str(), object))
    }

    fn secret_data(&self) -> BTreeMap<String, String> {
        assert_eq!(self.example_secret["kind"].as_str(), Some("Secret"));
        assert_eq!(
            self.example_secret["metadata"]["name"].as_str(),
            Some(SECRET_NAME)
        );
        string_map(
            &self.example_secret["stringData"],
            "the example Secret's stringData",
        )
    }

    fn config_map(&self, name: &str) -> BTreeMap<String, String> {
        let (_, config_map) = self
            .objects("ConfigMap")
            .find(|(_, object)| object["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no ConfigMap {name} in deploy/kubernetes/"));
        string_map(&config_map["data"], &format!("ConfigMap {name}"))
    }

    /// The environment a container gets: `envFrom` sources in order, then its `env` (which wins). Empty values
    /// are left out, as the binary reads an empty variable as unset.
    fn env_of(&self, container: &Value, what: &str) -> HashMap<String, String> {
        let secret = self.secret_data();
        let mut env = HashMap::new();
        for source in items(&container["envFrom"]) {
            if let Some(name) = source["configMapRef"]["name"].as_str() {
                env.extend(self.config_map(name));
            } else if let Some(name) = source["secretRef"]["name"].as_str() {
                assert_eq!(
                    name, SECRET_NAME,
                    "{what} reads a Secret the examples do not describe"
                );
                env.extend(secret.clone());
            } else {
                panic!("{what}: unexpected envFrom source {source:?}");
            }
        }
        for variable in items(&container["env"]) {
            let name = scalar(&variable["name"], what);
            let from = &variable["valueFrom"];
            let value = if let Some(key) = from["secretKeyRef"]["key"].as_str() {
                assert_eq!(
                    from["secretKeyRef"]["name"].as_str(),
                    Some(SECRET_NAME),
                    "{what}: {name}"
                );
                secret.get(key).cloned().unwrap_or_else(|| {
                    panic!(
                        "{what}: {name} comes from Secret key {key}, which the example Secret lacks"
                    )
                })
            } else if let Some(key) = from["configMapKeyRef"]["key"].as_str() {
                let map = scalar(&from["configMapKeyRef"]["name"], what);
                self.config_map(&map).get(key).cloned().unwrap_or_else(|| {
                    panic!("{what}: {name} comes from {map}.{key}, which is not set")
                })
            } else if from.is_null() {
                scalar(&variable["value"], &format!("{what}: {name}"))
            } else {
                panic!("{what}: {name} has an unexpected valueFrom {from:?}");
            };
            env.insert(name, value);
        }
        env.retain(|_, value| !value.is_empty());
        env
    }

    fn deployments(&self) -> Vec<Deployment<'_>> {
        let deployments: Vec<Deployment<'_>> = self
            .objects("Deployment")
            .map(|(file, object)| {
                let name = scalar(&object["metadata"]["name"], "a Deployment's name");
                let what = format!("Deployment {name} ({file})");
                let containers = items(&object["spec"]["template"]["spec"]["containers"]);
                assert_eq!(containers.len(), 1, "{what} has one container");
                let container = &containers[0];
                let kind = Kind::parse(&strings(&container["args"], &what), &what);
                let env = self.env_of(container, &what);
                Deployment {
                    name,
                    file,
                    object,
                    container,
                    kind,
                    env,
                }
            })
            .collect();
        assert!(
            !deployments.is_empty(),
            "no Deployment in deploy/kubernetes/"
        );
        deployments
    }
}

impl Deployment<'_> {
    fn what(&self) -> String {
        format!("Deployment {} ({})", self.name, self.file)
    }

    fn pod(&self) -> &Value {
        &self.object["spec"]["template"]["spec"]
    }
}

/// Whether a container's `env` takes `name` from the Secret's `key`.
fn takes_from_secret(container: &Value, name: &str, key: &str) -> bool {
    items(&container["env"]).iter().any(|variable| {
        variable["name"].as_str() == Some(name)
            && variable["valueFrom"]["secretKeyRef"]["name"].as_str() == Some(SECRET_NAME)
            && variable["valueFrom"]["secretKeyRef"]["key"].as_str() == Some(key)
    })
}

/// Checks a `createimage2 migrate` container: the direct URL, and a database configuration that loads.
fn assert_migrates_through_the_direct_url(
    kubernetes: &Kubernetes,
    container: &Value,
    what: &str,
) -> u32 {
    assert_eq!(
        strings(&container["args"], what),
        ["migrate"],
        "{what} runs `createimage2 migrate`"
    );
    assert!(
        takes_from_secret(container, "DATABASE_URL", "DATABASE_DIRECT_URL"),
        "{what}: migrations take a session advisory lock, so DATABASE_URL must be the direct URL \
         (secretKeyRef {SECRET_NAME}/DATABASE_DIRECT_URL), not the pooled one"
    );
    let env = kubernetes.env_of(container, what);
    DatabaseConfig::from_source(&env)
        .unwrap_or_else(|error| panic!("{what}: {error}"))
        .max_connections
}

#[test]
fn every_queue_of_the_registry_is_served_by_exactly_one_kubernetes_worker() {
    let kubernetes = Kubernetes::load();
    let fleets: Vec<(String, Vec<String>)> = kubernetes
        .deployments()
        .iter()
        .filter_map(|deployment| {
            deployment
                .kind
                .queues()
                .map(|queues| (deployment.name.clone(), queues.to_vec()))
        })
        .collect();
    assert_each_queue_served_once(&fleets, "worker Deployment of deploy/kubernetes/");
}

#[test]
fn every_kubernetes_role_has_the_configuration_it_needs_in_production() {
    let kubernetes = Kubernetes::load();
    let deployments = kubernetes.deployments();
    for role in ["api", "worker", "scheduler"] {
        assert!(
            deployments.iter().any(|deployment| match deployment.kind {
                Kind::Api => role == "api",
                Kind::Worker { .. } => role == "worker",
                Kind::Scheduler => role == "scheduler",
            }),
            "no Deployment runs the {role} role"
        );
    }
    for deployment in &deployments {
        let what = deployment.what();
        assert!(
            items(&deployment.container["env"])
                .iter()
                .any(|variable| variable["name"].as_str() == Some("DATABASE_MAX_CONNECTIONS")),
            "{what} sets DATABASE_MAX_CONNECTIONS in its own env: the connection budget counts it per role"
        );
        production_config(&what, &deployment.kind, &deployment.env);
    }
}

#[test]
fn workload_files_hold_no_secret_and_migrations_run_before_each_pod() {
    let kubernetes = Kubernetes::load();
    let secrets: Vec<&str> = kubernetes.objects("Secret").map(|(file, _)| file).collect();
    assert!(
        secrets.is_empty(),
        "a Secret in an applied file ({secrets:?}) overwrites the real one on every apply: it belongs in \
         out-of-band/secret.example.yaml"
    );
    let secret = kubernetes.secret_data();
    assert!(
        secret.contains_key("DATABASE_DIRECT_URL"),
        "the example Secret names DATABASE_DIRECT_URL"
    );

    for deployment in kubernetes.deployments() {
        let what = deployment.what();
        let migrate = items(&deployment.pod()["initContainers"])
            .iter()
            .find(|init| strings(&init["args"], &what) == ["migrate"])
            .unwrap_or_else(|| {
                panic!(
                    "{what} has no init container running `createimage2 migrate`: a new version's pods \
                     could start on the old schema"
                )
            });
        let what = format!("{what}, init container");
        assert_eq!(
            migrate["image"], deployment.container["image"],
            "{what} migrates with the image the pod then runs"
        );
        assert_migrates_through_the_direct_url(&kubernetes, migrate, &what);
    }

    let jobs: Vec<(&str, &Value)> = kubernetes.objects("Job").collect();
    assert!(!jobs.is_empty(), "no migrate Job in deploy/kubernetes/");
    for (file, job) in &jobs {
        let what = format!("Job ({file})");
        let containers = items(&job["spec"]["template"]["spec"]["containers"]);
        assert_eq!(containers.len(), 1, "{what} has one container");
        assert_migrates_through_the_direct_url(&kubernetes, &containers[0], &what);
        assert!(
            job["spec"]["ttlSecondsAfterFinished"].as_u64().is_some(),
            "{what} sets ttlSecondsAfterFinished, so each release's Job goes away"
        );
    }

    // Applied in the order of the file names: the namespace and configuration, then the migrate Job, then the
    // workloads, then what refers to them.
    let files = |kind: &'static str| -> Vec<&str> {
        kubernetes.objects(kind).map(|(file, _)| file).collect()
    };
    let last = |kind| {
        files(kind)
            .into_iter()
            .max()
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let first = |kind| {
        files(kind)
            .into_iter()
            .min()
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    for (before, after) in [
        ("Namespace", "ConfigMap"),
        ("ConfigMap", "Job"),
        ("Job", "Deployment"),
        ("Deployment", "ScaledObject"),
    ] {
        assert!(
            last(before) < first(after),
            "every {before} is in a file applied before any {after} ({} vs {})",
            last(before),
            first(after)
        );
    }
}

#[test]
fn autoscaling_ignores_paused_queues_and_stays_within_the_connection_budget() {
    let kubernetes = Kubernetes::load();
    let deployments = kubernetes.deployments();
    let namespaces: Vec<(&str, &Value)> = kubernetes.objects("Namespace").collect();
    assert_eq!(namespaces.len(), 1, "one Namespace");
    let budget: u32 = namespaces[0].1["metadata"]["annotations"]["createimage2.example/connection-budget"]
        .as_str()
        .and_then(|budget| budget.parse().ok())
        .expect("the Namespace is annotated createimage2.example/connection-budget: \"<connections>\"");

    let mut max_replicas: HashMap<&str, u32> = HashMap::new();
    for (file, scaled) in kubernetes.objects("ScaledObject") {
        let name = scalar(&scaled["metadata"]["name"], "a ScaledObject's name");
        let what = format!("ScaledObject {name} ({file})");
        let target_name = scaled["spec"]["scaleTargetRef"]["name"]
            .as_str()
            .unwrap_or_default();
        let target = deployments
            .iter()
            .find(|deployment| deployment.name == target_name)
            .unwrap_or_else(|| panic!("{what} scales {target_name:?}, which is no Deployment"));
        assert!(
            target.object["spec"]["replicas"].is_null(),
            "{}: KEDA owns its replica count, so it sets no spec.replicas (re-applying would reset it)",
            target.what()
        );
        let min = scaled["spec"]["minReplicaCount"]
            .as_u64()
            .expect("minReplicaCount");
        let max = scaled["spec"]["maxReplicaCount"]
            .as_u64()
            .expect("maxReplicaCount");
        assert!(
            (1..=max).contains(&min),
            "{what}: 1 ≤ minReplicaCount ≤ maxReplicaCount"
        );
        assert!(
            max_replicas
                .insert(target_name, u32::try_from(max).unwrap())
                .is_none(),
            "two ScaledObjects scale {target_name}"
        );

        let queues: BTreeSet<&str> = target
            .kind
            .queues()
            .unwrap_or_else(|| panic!("{what} scales {target_name}, which is no worker"))
            .iter()
            .map(String::as_str)
            .collect();
        let triggers = items(&scaled["spec"]["triggers"]);
        assert!(!triggers.is_empty(), "{what} has triggers");
        for trigger in triggers {
            assert_eq!(trigger["type"].as_str(), Some("prometheus"), "{what}");
            let query = scalar(&trigger["metadata"]["query"], &what);
            assert!(
                query.contains("createimage2_queue_paused"),
                "{what}: a paused queue's backlog must not scale workers up (`unless on (queue) \
                 (max by (queue) (createimage2_queue_paused) == 1)`): {query}"
            );
            if queues.contains("submit_generation") {
                assert!(
                    query.contains("createimage2_upstream_paused"),
                    "{what}: submit_generation's backlog while kie.ai is paused must not scale workers \
                     up: {query}"
                );
            }
            for selector in query.split("queue=~\"").skip(1) {
                let named: BTreeSet<&str> =
                    selector.split('"').next().unwrap().split('|').collect();
                assert_eq!(
                    named, queues,
                    "{what}: the query reads the queues {target_name} serves"
                );
            }
        }
    }

    // Each pod opens at most DATABASE_MAX_CONNECTIONS pooled connections plus one direct LISTEN connection; a
    // Deployment reaches its largest replica count plus its rollout surge. Init containers have closed theirs
    // before the pod's container starts.
    let mut table = Vec::new();
    let mut total = 0;
    for deployment in &deployments {
        let what = deployment.what();
        let config = production_config(&what, &deployment.kind, &deployment.env);
        let pool = config.database.max_connections;
        for init in items(&deployment.pod()["initContainers"]) {
            let init_pool = DatabaseConfig::from_source(&kubernetes.env_of(init, &what))
                .unwrap_or_else(|error| panic!("{what}: {error}"))
                .max_connections;
            assert!(
                init_pool <= pool + 1,
                "{what}: an init container opens no more than the pod"
            );
        }
        let replicas = match max_replicas.get(deployment.name.as_str()) {
            Some(max) => *max,
            None => deployment.object["spec"]["replicas"]
                .as_u64()
                .map(|replicas| u32::try_from(replicas).unwrap())
                .unwrap_or_else(|| {
                    panic!("{what} sets spec.replicas or is scaled by a ScaledObject")
                }),
        };
        let surge = match &deployment.object["spec"]["strategy"]["rollingUpdate"]["maxSurge"] {
            Value::Null => replicas.div_ceil(4),
            Value::Number(number) => u32::try_from(number.as_u64().unwrap()).unwrap(),
            Value::String(percent) => {
                let percent: u32 = percent
                    .strip_suffix('%')
                    .and_then(|percent| percent.parse().ok())
                    .unwrap_or_else(|| panic!("{what}: maxSurge {percent:?}"));
                (replicas * percent).div_ceil(100)
            }
            other => panic!("{what}: maxSurge {other:?}"),
        };
        let worst = (replicas + surge) * (pool + 1);
        total += worst;
        table.push(format!(
            "{:<20} ({replicas} + {surge} surge) × ({pool} pooled + 1 listen) = {worst}",
            deployment.name
        ));
    }
    for (file, job) in kubernetes.objects("Job") {
        let what = format!("Job ({file})");
        let container = &items(&job["spec"]["template"]["spec"]["containers"])[0];
        let pool = assert_migrates_through_the_direct_url(&kubernetes, container, &what);
        total += pool;
        table.push(format!("{what:<20} {pool}"));
    }
    assert!(
        total <= budget,
        "the fleet at its largest opens {total} connections, over the budget of {budget} \
         (00-namespace.yaml, deploy/README.md):\n{}",
        table.join("\n")
    );
}

// ----- systemd ---------------------------------------------------------------------------------------------

/// A unit file: the settings these checks read.
struct Unit {
    file: String,
    environment: Vec<(String, String)>,
    environment_files: Vec<String>,
    exec_start: String,
    timeout_stop: Option<Duration>,
    wants: Vec<String>,
}

fn systemd_dir() -> PathBuf {
    deploy_dir().join("systemd")
}

fn unquote(value: &str) -> &str {
    let value = value.trim();
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|rest| rest.strip_suffix(quote))
        {
            return inner;
        }
    }
    value
}

/// `TimeoutStopSec=`: seconds, `Ns` or `Nmin`.
fn systemd_duration(value: &str, what: &str) -> Duration {
    let value = value.trim();
    let (digits, unit) = value.split_at(
        value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len()),
    );
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("{what}: {value:?}"));
    match unit.trim() {
        "" | "s" | "sec" => Duration::from_secs(n),
        "min" | "m" => Duration::from_secs(60 * n),
        _ => panic!("{what}: unsupported duration {value:?}"),
    }
}

impl Unit {
    fn load(file: &str) -> Self {
        let mut unit = Self {
            file: file.to_owned(),
            environment: Vec::new(),
            environment_files: Vec::new(),
            exec_start: String::new(),
            timeout_stop: None,
            wants: Vec::new(),
        };
        for line in read(&systemd_dir().join(file)).lines() {
            if line.starts_with(['#', ';']) {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim();
            match key.trim() {
                "Environment" => {
                    let (name, value) = unquote(value)
                        .split_once('=')
                        .unwrap_or_else(|| panic!("{file}: Environment={value}"));
                    unit.environment
                        .push((name.to_owned(), unquote(value).to_owned()));
                }
                "EnvironmentFile" => unit
                    .environment_files
                    .push(value.trim_start_matches('-').to_owned()),
                "ExecStart" => value.clone_into(&mut unit.exec_start),
                "TimeoutStopSec" => unit.timeout_stop = Some(systemd_duration(value, file)),
                "Wants" => unit
                    .wants
                    .extend(value.split_whitespace().map(str::to_owned)),
                _ => {}
            }
        }
        unit
    }

    /// The environment of an instance: `Environment=` lines, then each `EnvironmentFile=` in order (a file
    /// overrides `Environment=`), read from the example beside the unit. Empty values are left out.
    fn env(&self, instance: &str) -> HashMap<String, String> {
        let mut env: HashMap<String, String> = self.environment.iter().cloned().collect();
        for file in &self.environment_files {
            let file = file.replace("%i", instance);
            let local = match file.as_str() {
                "/etc/createimage2/createimage2.env" => "createimage2.env.example",
                other => other
                    .strip_prefix("/etc/createimage2/")
                    .unwrap_or_else(|| panic!("{}: EnvironmentFile={other}", self.file)),
            };
            env.extend(env_file(&systemd_dir().join(local)));
        }
        env.retain(|_, value| !value.is_empty());
        env
    }

    /// `ExecStart=` with `${NAME}` replaced as systemd does (one argument each): the environment it sets
    /// through `env NAME=value …` and the arguments of `createimage2`.
    fn command(&self, env: &HashMap<String, String>) -> (HashMap<String, String>, Vec<String>) {
        let expand = |word: &str| -> String {
            let mut out = String::new();
            let mut rest = word;
            while let Some(start) = rest.find("${") {
                let end = rest[start..].find('}').unwrap() + start;
                out.push_str(&rest[..start]);
                out.push_str(env.get(&rest[start + 2..end]).map_or("", String::as_str));
                rest = &rest[end + 1..];
            }
            out.push_str(rest);
            out
        };
        let mut words = self.exec_start.split_whitespace();
        let mut overrides = HashMap::new();
        let mut program = words.next().unwrap_or_default();
        if program.ends_with("/env") {
            program = loop {
                let word = words.next().unwrap_or_default();
                match word.split_once('=') {
                    Some((name, value)) => {
                        overrides.insert(name.to_owned(), expand(value));
                    }
                    None => break word,
                }
            };
        }
        assert!(
            program.ends_with("/createimage2"),
            "{}: ExecStart runs {program}",
            self.file
        );
        (overrides, words.map(expand).collect())
    }
}

fn env_file(path: &Path) -> HashMap<String, String> {
    read(path)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (name, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: {line:?} is not NAME=value", path.display()));
            (name.trim().to_owned(), unquote(value).to_owned())
        })
        .collect()
}

/// A long-running process of the systemd examples: the api, the scheduler and each worker instance.
struct SystemdProcess {
    what: String,
    unit: Unit,
    kind: Kind,
    env: HashMap<String, String>,
}

/// The worker instances: one per `worker-<name>.env` example.
fn worker_instances() -> Vec<String> {
    let mut instances: Vec<String> = fs::read_dir(systemd_dir())
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            Some(
                name.strip_prefix("worker-")?
                    .strip_suffix(".env")?
                    .to_owned(),
            )
        })
        .collect();
    instances.sort();
    assert!(
        !instances.is_empty(),
        "no worker-<name>.env in deploy/systemd/"
    );
    instances
}

fn systemd_processes() -> Vec<SystemdProcess> {
    let mut units = vec![
        (
            "createimage2-api.service".to_owned(),
            "createimage2-api.service",
            String::new(),
        ),
        (
            "createimage2-scheduler.service".to_owned(),
            "createimage2-scheduler.service",
            String::new(),
        ),
    ];
    for instance in worker_instances() {
        units.push((
            format!("createimage2-worker@{instance}.service"),
            "createimage2-worker@.service",
            instance,
        ));
    }
    units
        .into_iter()
        .map(|(what, file, instance)| {
            let unit = Unit::load(file);
            let mut env = unit.env(&instance);
            let (overrides, args) = unit.command(&env);
            env.extend(overrides);
            let kind = Kind::parse(&args, &what);
            SystemdProcess {
                what,
                unit,
                kind,
                env,
            }
        })
        .collect()
}

#[test]
fn every_queue_of_the_registry_is_served_by_a_systemd_worker_instance() {
    let processes = systemd_processes();
    let fleets: Vec<(String, Vec<String>)> = processes
        .iter()
        .filter_map(|process| {
            process
                .kind
                .queues()
                .map(|queues| (process.what.clone(), queues.to_vec()))
        })
        .collect();
    assert_each_queue_served_once(
        &fleets,
        "systemd worker instance (deploy/systemd/worker-*.env)",
    );

    let target = Unit::load("createimage2.target");
    for process in &processes {
        assert!(
            target.wants.contains(&process.what),
            "createimage2.target starts {}",
            process.what
        );
    }
}

#[test]
fn every_systemd_role_has_the_configuration_it_needs_in_production() {
    let mut metrics_addresses: BTreeMap<String, &str> = BTreeMap::new();
    let processes = systemd_processes();
    for process in &processes {
        let config = production_config(&process.what, &process.kind, &process.env);
        if let Some(other) =
            metrics_addresses.insert(config.http.metrics_listen.to_string(), &process.what)
        {
            panic!(
                "{} and {other} both listen on {} for /metrics",
                process.what, config.http.metrics_listen
            );
        }
    }

    let migrate = Unit::load("createimage2-migrate.service");
    let env = migrate.env("");
    let (overrides, args) = migrate.command(&env);
    assert_eq!(
        args,
        ["migrate"],
        "createimage2-migrate.service runs `createimage2 migrate`"
    );
    assert_eq!(
        overrides.get("DATABASE_URL"),
        env.get("DATABASE_DIRECT_URL"),
        "createimage2-migrate.service: migrations take a session advisory lock, so DATABASE_URL is the \
         direct URL (${{DATABASE_DIRECT_URL}})"
    );
    assert!(overrides.contains_key("DATABASE_URL") && env.contains_key("DATABASE_DIRECT_URL"));
    let mut migrate_env = env;
    migrate_env.extend(overrides);
    DatabaseConfig::from_source(&migrate_env)
        .unwrap_or_else(|error| panic!("createimage2-migrate.service: {error}"));
}

// ----- both ------------------------------------------------------------------------------------------------

#[test]
fn every_grace_period_outlasts_its_roles_drain() {
    let kubernetes = Kubernetes::load();
    for deployment in kubernetes.deployments() {
        let what = deployment.what();
        let config = production_config(&what, &deployment.kind, &deployment.env);
        let stop = config.stop_within(deployment.kind.role());
        let grace = deployment.pod()["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or_else(|| panic!("{what} sets terminationGracePeriodSeconds"));
        assert!(
            Duration::from_secs(grace) > stop,
            "{what}: terminationGracePeriodSeconds {grace} must outlast the role's stop ({stop:?}), or the pod \
             is killed mid-drain"
        );
        if matches!(deployment.kind, Kind::Api) {
            // The Service stops routing to the pod once its readiness probe failed failureThreshold times;
            // /readyz answers 503 for DRAIN_READINESS_SECONDS before the listener closes.
            let probe = &deployment.container["readinessProbe"];
            assert_eq!(
                probe["httpGet"]["path"].as_str(),
                Some("/readyz"),
                "{what} has a readinessProbe on /readyz"
            );
            let period = probe["periodSeconds"].as_u64().unwrap_or(10);
            let failures = probe["failureThreshold"].as_u64().unwrap_or(3);
            let drain: u64 = deployment
                .env
                .get("DRAIN_READINESS_SECONDS")
                .map_or(5, |seconds| seconds.parse().unwrap());
            assert!(
                period * failures.max(2) <= drain,
                "{what}: DRAIN_READINESS_SECONDS ({drain}) must cover {} readiness probes {period} s apart",
                failures.max(2)
            );
        }
    }

    for process in systemd_processes() {
        let config = production_config(&process.what, &process.kind, &process.env);
        let stop = config.stop_within(process.kind.role());
        let timeout = process
            .unit
            .timeout_stop
            .unwrap_or_else(|| panic!("{} sets TimeoutStopSec", process.unit.file));
        assert!(
            timeout > stop,
            "{}: TimeoutStopSec ({timeout:?}) must outlast the role's stop ({stop:?}), or systemd kills it \
             mid-drain",
            process.what
        );
    }
}
