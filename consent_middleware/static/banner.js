/* Consent banner served by ConsentMiddleware: no framework, no requests to other sites.
 * Reads the state from GET {prefix}, posts choices as JSON to {prefix} with source "banner",
 * then dispatches "consent:change" on document (detail: the new state).
 * Any element with data-consent-settings reopens the settings. */
(function () {
  "use strict";
  // The server replaces the next object with its configuration (prefix, texts, contact, gpc).
  var CONFIG = /*@config*/ {};
  var d = document;
  var prefix = CONFIG.prefix || "/consent";
  var texts = CONFIG.texts || {};
  var gpcNames = CONFIG.gpc || [];
  var t, lang, state, root, panel, lastFocus, inerted = [];
  // Browsers that implement GPC also send Sec-GPC, so the server knows; an extension may set
  // only the property, so the banner applies the same rule to the choices it makes.
  var gpc = navigator.globalPrivacyControl === true;

  function pickLang() {
    var tag = (d.documentElement.lang || navigator.language || "en").toLowerCase();
    var primary = tag.split("-")[0];
    return texts[primary] ? primary : "en";
  }

  function el(tag, attrs, text) {
    var node = d.createElement(tag);
    for (var key in attrs) node.setAttribute(key, attrs[key]);
    if (text != null) node.textContent = text; // textContent: labels are never parsed as HTML
    return node;
  }

  function pick(map) {
    return (map && (map[lang] || map.en)) || "";
  }

  function sep() {
    return lang === "ja" ? "、" : ", ";
  }

  function gpcApplies() {
    return gpc || (state && state.gpc);
  }

  function isGpcPurpose(name) {
    return gpcNames.indexOf(name) >= 0;
  }

  function emit(type) {
    d.dispatchEvent(new CustomEvent(type, { detail: state }));
  }

  function request(method, body) {
    var init = { method: method, credentials: "same-origin", cache: "no-store", headers: {} };
    init.headers.Accept = "application/json";
    if (body) {
      init.headers["Content-Type"] = "application/json";
      body.source = "banner";
      init.body = JSON.stringify(body);
    }
    return fetch(prefix, init).then(function (response) {
      if (!response.ok) throw new Error("consent endpoint answered " + response.status);
      return response.json();
    });
  }

  function initialOn(purpose) {
    if (purpose.required) return true;
    if (gpcApplies() && isGpcPurpose(purpose.name) && state.needs_prompt) return false;
    return !!state.purposes[purpose.name];
  }

  function purposeRow(purpose) {
    var id = "cb-p-" + purpose.name;
    var row = el("div", { class: "cb-purpose" });
    var label = el("label", { for: id });
    var input = el("input", { type: "checkbox", role: "switch", id: id, name: purpose.name });
    input.checked = initialOn(purpose);
    if (purpose.required) {
      input.disabled = true;
      input.setAttribute("aria-describedby", id + "-on");
    }
    label.appendChild(input);
    label.appendChild(el("span", { class: "cb-label" }, pick(purpose.labels)));
    row.appendChild(label);
    if (purpose.required) row.appendChild(el("span", { class: "cb-on", id: id + "-on" }, t.always_on));
    var description = pick(purpose.descriptions);
    if (description) row.appendChild(el("p", { class: "cb-desc" }, description));
    return row;
  }

  function button(action, text) {
    return el("button", { type: "button", class: "cb-btn", "data-cb": action }, text);
  }

  function render(showSettings) {
    var available = state.available || [];
    panel = el("div", {
      class: "cb",
      role: "dialog",
      "aria-modal": "true",
      "aria-labelledby": "cb-title",
      "aria-describedby": "cb-intro",
      tabindex: "-1",
      lang: lang,
    });
    panel.appendChild(el("h2", { id: "cb-title", class: "cb-title" }, t.title));
    panel.appendChild(el("p", { id: "cb-intro" }, t.intro));
    var optional = available.filter(function (p) { return !p.required; });
    if (!showSettings && optional.length) {
      var names = optional.map(function (p) { return pick(p.labels); });
      panel.appendChild(el("p", { class: "cb-list" }, t.purposes + ": " + names.join(sep())));
    }
    if (gpcApplies()) {
      var gpcPurposes = available.filter(function (p) { return isGpcPurpose(p.name); });
      var labels = gpcPurposes.map(function (p) { return pick(p.labels); }).join(sep());
      panel.appendChild(el("p", { class: "cb-gpc", role: "note" }, t.gpc_note.replace("{purposes}", labels)));
    }
    var list = el("fieldset", { class: "cb-purposes" });
    list.appendChild(el("legend", {}, t.purposes));
    available.forEach(function (p) { list.appendChild(purposeRow(p)); });
    list.hidden = !showSettings;
    panel.appendChild(list);
    if (state.receipt_id) {
      var receipt = el("p", { class: "cb-receipt" }, t.receipt + ": ");
      receipt.appendChild(el("code", {}, state.receipt_id));
      receipt.appendChild(d.createTextNode(" " + t.receipt_help));
      panel.appendChild(receipt);
    }
    if (CONFIG.contact) panel.appendChild(el("p", { class: "cb-contact" }, t.contact + ": " + CONFIG.contact));
    var actions = el("div", { class: "cb-actions" });
    actions.appendChild(button("all", t.accept_all));
    actions.appendChild(button("none", t.reject_all));
    actions.appendChild(showSettings ? button("save", t.save) : button("settings", t.customize));
    panel.appendChild(actions);
    panel.appendChild(el("p", { class: "cb-status", role: "status", "aria-live": "polite" }));
    panel.addEventListener("click", onClick);
    panel.addEventListener("keydown", onKey);
    root = el("div", { class: "cb-backdrop" });
    root.appendChild(panel);
  }

  function focusables() {
    var nodes = panel.querySelectorAll("button, input:not([disabled]), a[href], [tabindex='0']");
    return Array.prototype.filter.call(nodes, function (n) {
      return n.getClientRects().length > 0; // skips elements inside hidden parts
    });
  }

  function onKey(event) {
    if (event.key === "Escape") {
      // Escape closes without deciding: nothing is granted, the banner asks again later.
      event.preventDefault();
      close();
      return;
    }
    if (event.key !== "Tab") return;
    var items = focusables();
    if (!items.length) return;
    var first = items[0], last = items[items.length - 1], active = d.activeElement;
    if (event.shiftKey && (active === first || active === panel)) {
      event.preventDefault();
      last.focus();
    } else if (!event.shiftKey && active === last) {
      event.preventDefault();
      first.focus();
    }
  }

  function onFocusIn(event) {
    if (panel && !panel.contains(event.target)) panel.focus();
  }

  function choice() {
    var purposes = {};
    (state.available || []).forEach(function (p) {
      var input = d.getElementById("cb-p-" + p.name);
      if (!p.required && input) purposes[p.name] = input.checked;
    });
    return { purposes: purposes };
  }

  function acceptAll() {
    if (!gpcApplies()) return { accept: "all" };
    // Under GPC, "accept all" leaves the sale/sharing purposes off; switching one on in the
    // settings is the explicit choice that overrides the signal, as on the server.
    var purposes = {};
    (state.available || []).forEach(function (p) {
      if (!p.required) purposes[p.name] = !isGpcPurpose(p.name);
    });
    return { purposes: purposes };
  }

  function onClick(event) {
    var target = event.target.closest ? event.target.closest("[data-cb]") : null;
    if (!target) return;
    var action = target.getAttribute("data-cb");
    if (action === "settings") return open(true);
    var body = action === "all" ? acceptAll() : action === "none" ? { accept: "necessary" } : choice();
    Array.prototype.forEach.call(panel.querySelectorAll("button"), function (b) { b.disabled = true; });
    request("POST", body).then(
      function (next) {
        state = next;
        close();
        emit("consent:change");
      },
      function () {
        Array.prototype.forEach.call(panel.querySelectorAll("button"), function (b) { b.disabled = false; });
        panel.querySelector(".cb-status").textContent = t.error;
      }
    );
  }

  function setInert(on) {
    if (on) {
      Array.prototype.forEach.call(d.body.children, function (child) {
        if (child !== root && !child.inert) {
          child.inert = true;
          inerted.push(child);
        }
      });
    } else {
      inerted.forEach(function (child) { child.inert = false; });
      inerted = [];
    }
  }

  function open(showSettings) {
    if (!state) return;
    var reopening = !!root;
    if (reopening) close(true);
    else lastFocus = d.activeElement;
    render(!!showSettings);
    d.body.appendChild(root);
    setInert(true);
    d.addEventListener("focusin", onFocusIn);
    var first = showSettings ? panel.querySelector(".cb-purposes input:not([disabled])") : null;
    (first || panel).focus();
  }

  function close(keepFocus) {
    if (!root) return;
    d.removeEventListener("focusin", onFocusIn);
    setInert(false);
    root.remove();
    root = panel = null;
    if (!keepFocus && lastFocus && lastFocus.focus) lastFocus.focus();
  }

  function onSettingsLink(event) {
    var link = event.target.closest ? event.target.closest("[data-consent-settings]") : null;
    if (!link || !state) return; // without a state, the link's own href (the settings page) works
    event.preventDefault();
    open(true);
  }

  function start() {
    lang = pickLang();
    t = texts[lang] || texts.en || {};
    d.addEventListener("click", onSettingsLink);
    request("GET").then(function (current) {
      state = current;
      emit("consent:ready");
      if (state.needs_prompt) open(false);
    });
  }

  window.ConsentBanner = {
    open: function () { open(true); },
    state: function () { return state; },
  };
  if (d.readyState === "loading") d.addEventListener("DOMContentLoaded", start);
  else start();
})();
