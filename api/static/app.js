// createimage2 — progressive enhancement only: every action also works without this script.
"use strict";
document.documentElement.classList.add("js");

const csrf = () => document.body.dataset.csrf || "";

// Analytics: only when the server rendered consent (it never does under Do Not Track / GPC).
(function analytics() {
  const id = document.body.dataset.gaId, src = document.body.dataset.gaSrc;
  if (!id || !src || navigator.doNotTrack === "1" || navigator.globalPrivacyControl) return;
  window.dataLayer = window.dataLayer || [];
  window.gtag = function () { window.dataLayer.push(arguments); };
  window.gtag("js", new Date());
  window.gtag("config", id, { anonymize_ip: true });
  const script = document.createElement("script");
  script.async = true;
  script.src = src + "?id=" + encodeURIComponent(id);
  document.head.appendChild(script);
})();

// Generator: only offer resolutions the upstream accepts for the chosen aspect ratio; show the cost.
(function generator() {
  const form = document.getElementById("generator");
  if (!form) return;
  // The rules differ by model: with reference images attached the image-to-image model's apply.
  const matrix = (data) => Object.fromEntries(data.split(";").map((p) => {
    const [ratio, list] = p.split("=");
    return [ratio, list.split("|")];
  }));
  const withoutReferences = matrix(form.dataset.allowed);
  const withReferences = matrix(form.dataset.allowedWithReferences);
  const ratios = Array.from(form.querySelectorAll("input[name=aspect_ratio]"));
  const resolutions = Array.from(form.querySelectorAll("input[name=resolution]"));
  const counts = Array.from(form.querySelectorAll("input[name=n]"));
  const checked = (inputs) => inputs.find((input) => input.checked);
  const cost = document.getElementById("cost");
  const previews = document.getElementById("reference-previews");
  const name = (ratio) => ratio === "auto" ? "Auto" : ratio;
  // A choice the other one rules out is disabled, and says why under it.
  const explain = (input, why) => {
    input.disabled = why !== "";
    input.closest("label").classList.toggle("unavailable", why !== "");
    const note = document.getElementById(input.id + "-why");
    if (note) note.textContent = why;
  };
  const update = () => {
    const referenced = previews.querySelector("input[name=reference_upload_ids]") !== null;
    const rules = referenced ? withReferences : withoutReferences;
    const allowed = (ratio, res) => (rules[ratio] || ["1K"]).includes(res);
    const also = referenced ? " with references" : "";
    const ratio = checked(ratios);
    // Attaching a reference can rule out the chosen pair: keep the ratio, take the first resolution it allows.
    const current = checked(resolutions);
    if (ratio && current && !allowed(ratio.value, current.value)) {
      const first = resolutions.find((res) => allowed(ratio.value, res.value));
      if (first) first.checked = true;
    }
    const res = checked(resolutions);
    for (const input of resolutions) {
      explain(input, !ratio || allowed(ratio.value, input.value) ? "" : "Not at " + name(ratio.value) + also);
    }
    for (const input of ratios) {
      explain(input, !res || allowed(input.value, res.value) ? "" : "Not at " + res.value + also);
    }
    const images = Number((checked(counts) || { value: "1" }).value);
    cost.textContent = String(Number((res || resolutions[0]).dataset.cost) * images);
  };
  for (const input of ratios.concat(resolutions, counts)) input.addEventListener("change", update);
  update();

  // Reference images go straight to the bucket through a presigned PUT; the form carries their ids.
  const files = document.getElementById("reference-files");
  const status = document.getElementById("upload-status");
  const submit = document.getElementById("generate");
  const attached = () => previews.querySelectorAll("input[name=reference_upload_ids]").length;
  const announce = () => {
    const n = attached();
    status.textContent = n === 0 ? "No reference images attached."
      : n === 1 ? "1 reference image attached." : n + " reference images attached.";
  };
  const removeButton = (name) => {
    const button = document.createElement("button");
    button.type = "button"; button.className = "remove"; button.textContent = "Remove";
    button.setAttribute("aria-label", "Remove reference image " + name);
    return button;
  };
  previews.addEventListener("click", (event) => {
    const button = event.target.closest("button.remove");
    if (!button) return;
    button.closest("figure").remove();
    announce();
    update();
  });
  files.addEventListener("change", async () => {
    const chosen = Array.from(files.files);
    const present = attached();
    if (present + chosen.length > 16) { status.textContent = "At most 16 reference images."; return; }
    submit.disabled = true;
    let done = 0;
    for (const file of chosen) {
      status.textContent = "Uploading " + (done + 1) + " of " + chosen.length + "…";
      try {
        const signed = await fetch("/uploads", {
          method: "POST",
          headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
          body: JSON.stringify({ content_type: file.type, byte_size: file.size }),
        });
        const body = await signed.json();
        if (!signed.ok) throw new Error(body.message || "the upload was refused");
        const put = await fetch(body.upload_url, { method: "PUT", headers: { "Content-Type": file.type }, body: file });
        if (!put.ok) throw new Error("the upload failed (" + put.status + ")");
        const figure = document.createElement("figure");
        figure.className = "preview";
        const img = document.createElement("img");
        img.src = URL.createObjectURL(file);
        img.alt = "Reference image " + file.name;
        const input = document.createElement("input");
        input.type = "hidden"; input.name = "reference_upload_ids"; input.value = body.upload_id;
        figure.append(img, input, removeButton(file.name));
        previews.appendChild(figure);
        done += 1;
      } catch (error) {
        status.textContent = file.name + ": " + error.message;
        submit.disabled = false;
        update();
        return;
      }
    }
    announce();
    files.value = "";
    submit.disabled = false;
    update();
  });
})();

// Status page: follow the generation (and the other images of its request) live over server-sent events;
// show the image when it is ready, and count the wait.
(function liveStatus() {
  const section = document.getElementById("generation");
  if (!section) return;
  const words = (seconds) => seconds < 60 ? seconds + " s"
    : seconds < 3600 ? Math.floor(seconds / 60) + " min" + (seconds % 60 ? " " + (seconds % 60) + " s" : "")
    : Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
  const elapsed = document.getElementById("elapsed");
  if (elapsed) {
    const shown = Number(elapsed.dataset.seconds), loaded = Date.now();
    setInterval(() => { elapsed.textContent = words(shown + Math.floor((Date.now() - loaded) / 1000)); }, 1000);
  }
  if (!section.dataset.events) return;
  const own = section.dataset.id;
  const badge = document.getElementById("status");
  const labels = { queued: "Queued", submitting: "Sending to the model", generating: "Generating",
    storing: "Saving your image", succeeded: "Ready", failed: "Failed", cancelled: "Cancelled" };
  const final = (status) => status === "succeeded" || status === "failed" || status === "cancelled";
  const cancel = document.getElementById("cancel-form");
  // Another image of the request finished: fetch the page again for its picture, and swap in the set.
  const refreshSet = async () => {
    try {
      const page = new DOMParser().parseFromString(await (await fetch(window.location.href)).text(), "text/html");
      const fresh = page.getElementById("set"), set = document.getElementById("set");
      if (fresh && set) set.replaceWith(fresh);
    } catch (_) { /* the next event or the end of the stream reloads the page */ }
  };
  const source = new EventSource(section.dataset.events);
  source.addEventListener("status", (event) => {
    const body = JSON.parse(event.data);
    const id = body.id || own, status = body.status;
    const tile = document.querySelector("#set li[data-generation='" + id + "']");
    if (tile && tile.dataset.status !== status) {
      tile.dataset.status = status;
      const tileBadge = tile.querySelector(".badge");
      tileBadge.textContent = labels[status] || "In progress";
      tileBadge.dataset.status = status;
      if (final(status) && id !== own) refreshSet();
    }
    if (id !== own || badge.dataset.status === status) return;
    badge.textContent = labels[status] || "In progress";
    badge.dataset.status = status;
    if (cancel && status !== "queued") cancel.hidden = true;
    const ahead = document.getElementById("ahead");
    if (ahead && status !== "queued") ahead.hidden = true;
    if (final(status)) { source.close(); window.location.reload(); }
  });
  source.onerror = () => { source.close(); setTimeout(() => window.location.reload(), 3000); };
})();

// Checkout: the worker opens the Stripe session; its URL arrives as a server-sent event.
(function checkout() {
  const section = document.getElementById("checkout-intent");
  if (!section || !section.dataset.intent) return;
  const source = new EventSource("/billing/intents/" + section.dataset.intent + "/events");
  source.addEventListener("intent", (event) => {
    source.close();
    const body = JSON.parse(event.data);
    if (body.url) window.location.assign(body.url);
    else window.location.reload();
  });
  source.onerror = () => { source.close(); setTimeout(() => window.location.reload(), 2000); };
})();

// After checkout: the payment's credits arrive as one server-sent event; the notice and the balance follow.
(function purchase() {
  const section = document.getElementById("purchase");
  if (!section || !section.dataset.events) return;
  const source = new EventSource(section.dataset.events);
  source.addEventListener("purchase", (event) => {
    source.close();
    const body = JSON.parse(event.data);
    const status = document.getElementById("purchase-status");
    const pending = document.getElementById("credits-pending");
    if (pending) {
      pending.id = "credits-arrived";
      pending.textContent = "";
      const strong = document.createElement("strong");
      strong.textContent = body.credits + " credits";
      pending.append(strong, " were added to your balance.");
      if (body.granted > body.credits) {
        pending.append(" The other " + (body.granted - body.credits) +
          " settled credits owed after a refunded or disputed payment.");
      }
    }
    status.dataset.credited = String(body.credits);
    document.getElementById("live-balance").textContent = String(body.balance);
    const header = document.querySelector(".balance .credits");
    if (header) { header.textContent = String(body.balance); header.dataset.balance = String(body.balance); }
  });
  source.onerror = () => { source.close(); setTimeout(() => window.location.reload(), 3000); };
})();
