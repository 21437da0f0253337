//! The e-mail outbox and its delivery, through a real SMTP conversation with a server in the test.

use std::sync::{Arc, Mutex};

use jobs::email::{self, DeliveryError, MailConfig, Outgoing, Transport};
use testkit::TestApp;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};

fn message() -> mail::Message {
    mail::policy_notice(
        "v2",
        "March 1, 2027",
        "A new processor.",
        "https://createimage2.com/privacy-policy",
    )
}

/// A minimal SMTP server: answers RCPT with `rcpt_reply` and records each accepted DATA.
async fn smtp_server(rcpt_reply: &'static str) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let store = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 test ESMTP\r\n").await.unwrap();
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_ascii_uppercase();
                    let reply: &str = match verb.as_str() {
                        "EHLO" | "HELO" => "250-test\r\n250 OK\r\n",
                        "MAIL" | "RSET" | "NOOP" => "250 OK\r\n",
                        "RCPT" => rcpt_reply,
                        "DATA" => {
                            write.write_all(b"354 go ahead\r\n").await.unwrap();
                            let mut data = String::new();
                            while let Ok(Some(line)) = lines.next_line().await {
                                if line == "." {
                                    break;
                                }
                                data.push_str(&line);
                                data.push('\n');
                            }
                            store.lock().unwrap().push(data);
                            "250 queued\r\n"
                        }
                        "QUIT" => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => "502 not implemented\r\n",
                    };
                    write.write_all(reply.as_bytes()).await.unwrap();
                }
            });
        }
    });
    (port, received)
}

fn smtp_config(port: u16) -> MailConfig {
    MailConfig {
        transport: Transport::Smtp(format!("smtp://127.0.0.1:{port}").into()),
        from: "createimage2 <no-reply@createimage2.com>".into(),
        per_second: 10,
    }
}

async fn queued_row(app: &TestApp, key: &str) -> email::OutboxRow {
    let mut tx = app.pool.begin().await.unwrap();
    let to = format!("{key}@example.com");
    email::queue(
        &mut tx,
        Outgoing {
            to: &to,
            user_id: None,
            idempotency_key: key.into(),
            message: message(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    email::sent_to(&app.pool, &to).await.unwrap().remove(0)
}

#[tokio::test]
async fn an_email_queued_twice_under_one_key_is_written_once_and_marked_sent_by_the_job() {
    let app = TestApp::spawn().await;
    let mut tx = app.pool.begin().await.unwrap();
    let outgoing = || Outgoing {
        to: "once@example.com",
        user_id: None,
        idempotency_key: "k-1".into(),
        message: message(),
    };
    assert!(email::queue(&mut tx, outgoing()).await.unwrap());
    assert!(!email::queue(&mut tx, outgoing()).await.unwrap());
    tx.commit().await.unwrap();
    app.drain().await;
    let sent = email::sent_to(&app.pool, "once@example.com").await.unwrap();
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0].sent_at.is_some(),
        "the outbox transport marks it sent"
    );
    assert_eq!(sent[0].template, "policy_notice");
    app.finish().await;
}

#[tokio::test]
async fn smtp_delivery_sends_a_multipart_message_with_the_text_and_html_bodies() {
    let app = TestApp::builder().without_worker().spawn().await;
    let (port, received) = smtp_server("250 OK\r\n").await;
    let row = queued_row(&app, "smtp-ok").await;
    email::deliver(&smtp_config(port), &row).await.unwrap();
    let data = received.lock().unwrap().join("");
    assert!(data.contains("To: smtp-ok@example.com"), "{data}");
    assert!(data.contains("multipart/alternative"), "{data}");
    assert!(
        data.contains("text/plain") && data.contains("text/html"),
        "{data}"
    );
    app.discard_unrun_jobs().await;
    app.finish().await;
}

#[tokio::test]
async fn a_4xx_answer_is_transient_and_a_5xx_answer_is_permanent() {
    let app = TestApp::builder().without_worker().spawn().await;
    let (busy, _) = smtp_server("451 try again later\r\n").await;
    let (rejecting, _) = smtp_server("550 no such mailbox\r\n").await;
    let row = queued_row(&app, "smtp-codes").await;
    assert!(matches!(
        email::deliver(&smtp_config(busy), &row).await,
        Err(DeliveryError::Transient(_))
    ));
    assert!(matches!(
        email::deliver(&smtp_config(rejecting), &row).await,
        Err(DeliveryError::Permanent(_))
    ));
    app.discard_unrun_jobs().await;
    app.finish().await;
}

#[tokio::test]
async fn the_file_transport_writes_an_eml_file_with_both_parts() {
    let app = TestApp::builder().without_worker().spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let config = MailConfig {
        transport: Transport::File(dir.path().into()),
        from: "a <a@b.c>".into(),
        per_second: 10,
    };
    let row = queued_row(&app, "file").await;
    email::deliver(&config, &row).await.unwrap();
    let file = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let eml = std::fs::read_to_string(file).unwrap();
    assert!(
        eml.contains("text/plain") && eml.contains("text/html") && eml.contains("file@example.com")
    );
    app.discard_unrun_jobs().await;
    app.finish().await;
}

#[test]
fn mail_configuration_names_the_missing_variable() {
    let vars: std::collections::HashMap<String, String> =
        [("MAIL_TRANSPORT".to_owned(), "smtp".to_owned())].into();
    let error = MailConfig::from_source(&vars).unwrap_err().to_string();
    assert!(error.contains("SMTP_URL"), "{error}");
}
