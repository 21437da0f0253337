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
  const ratio = document.getElementById("aspect_ratio");
  const resolution = document.getElementById("resolution");
  const cost = document.getElementById("cost");
  const previews = document.getElementById("reference-previews");
  const update = () => {
    const referenced = previews.querySelector("input[name=reference_upload_ids]") !== null;
    const ok = (referenced ? withReferences : withoutReferences)[ratio.value] || ["1K"];
    for (const option of resolution.options) option.disabled = !ok.includes(option.value);
    if (resolution.selectedOptions[0].disabled) resolution.value = ok[0];
    cost.textContent = resolution.selectedOptions[0].dataset.cost;
  };
  ratio.addEventListener("change", update);
  resolution.addEventListener("change", update);
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

// Status page: follow the generation live (server-sent events) and show the image when it is ready.
(function liveStatus() {
  const section = document.getElementById("generation");
  if (!section || !section.dataset.events) return;
  const badge = document.getElementById("status");
  const labels = { queued: "Queued", submitting: "Sending to the model", generating: "Generating",
    storing: "Saving your image", succeeded: "Ready", failed: "Failed", cancelled: "Cancelled" };
  const cancel = document.getElementById("cancel-form");
  const source = new EventSource(section.dataset.events);
  source.addEventListener("status", (event) => {
    const status = JSON.parse(event.data).status;
    badge.textContent = labels[status] || "In progress";
    badge.dataset.status = status;
    if (cancel && status !== "queued") cancel.hidden = true;
    if (status === "succeeded" || status === "failed" || status === "cancelled") { source.close(); window.location.reload(); }
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
