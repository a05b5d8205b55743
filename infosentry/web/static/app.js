// infosentry pages: progressive enhancement only. Every form works without this file; with it, feedback and
// mark-read happen without a page reload, term suggestions appear while a goal is written, and the source form
// shows only the fields of the chosen type.
"use strict";

(function () {
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const live = (text) => {
    const region = document.getElementById("live");
    if (region) { region.textContent = ""; setTimeout(() => { region.textContent = text; }, 30); }
  };

  async function post(url, data) {
    const response = await fetch(url, {
      method: "POST",
      body: data,
      credentials: "same-origin",
      headers: { "Accept": "application/json", "X-CSRF-Token": csrf() },
    });
    if (!response.ok) throw new Error("HTTP " + response.status);
    return response.json();
  }

  // like / dislike / block source / undo
  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!form.matches("[data-feedback]")) return;
    const button = event.submitter;
    if (!button || !button.value) return;
    event.preventDefault();
    const data = new FormData(form);
    data.set("action", button.value);
    try {
      const state = await post(form.getAttribute("action"), data);
      form.querySelectorAll("button[name=action]").forEach((b) => {
        if (b.value === "like" || b.value === "dislike") b.setAttribute("aria-pressed", String(state.feedback === b.value));
        if (b.value === "block" && state.blocked) { b.setAttribute("aria-pressed", "true"); b.disabled = true; }
        if (b.value === "undo" && !state.feedback) b.remove();
      });
      form.dataset.state = state.feedback || (state.blocked ? "blocked" : "none");
      live(state.message || "");
    } catch (err) {
      form.submit();  // the plain form still works
    }
  });

  // mark one inbox entry read
  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!form.matches("[data-read]")) return;
    event.preventDefault();
    try {
      const state = await post(form.getAttribute("action"), new FormData(form));
      const entry = form.closest("[data-entry]");
      if (entry) entry.classList.remove("unread");
      form.remove();
      live(state.message || "");
    } catch (err) {
      form.submit();
    }
  });

  // term suggestions while a goal is written
  const goalForm = document.getElementById("goal-form");
  if (goalForm) {
    const box = document.getElementById("suggestions");
    const terms = document.getElementById("terms");
    const button = document.getElementById("suggest-button");
    let timer = null;
    let asked = "";
    const ask = async () => {
      const text = goalForm.description.value.trim() + "|" + goalForm.name.value.trim();
      if (goalForm.description.value.trim().length < 10 || text === asked) return;
      asked = text;
      const data = new FormData();
      data.set("description", goalForm.description.value);
      data.set("name", goalForm.name.value);
      data.set("terms", terms.value);
      data.set("goal_id", goalForm.dataset.goal || "");
      try {
        const answer = await post("/goals/suggest", data);
        show(answer);
      } catch (err) { /* suggestions are a nicety: the form works without them */ }
    };
    const show = (answer) => {
      box.textContent = "";
      if (!answer.terms || !answer.terms.length) return;
      const label = document.createElement("p");
      label.className = "hint";
      label.textContent = box.dataset.label || (button ? button.textContent : "");
      const list = document.createElement("ul");
      list.className = "chips";
      list.setAttribute("aria-label", label.textContent);
      answer.terms.forEach((term) => {
        const item = document.createElement("li");
        const chip = document.createElement("button");
        chip.type = "button";
        chip.textContent = "+ " + term;
        chip.dataset.term = term;
        chip.addEventListener("click", () => {
          const current = terms.value.trim();
          terms.value = current ? current + "\n" + term : term;
          item.remove();
          live(term);
          terms.focus();
        });
        item.appendChild(chip);
        list.appendChild(item);
      });
      box.appendChild(list);
    };
    const later = () => { clearTimeout(timer); timer = setTimeout(ask, 700); };
    goalForm.description.addEventListener("input", later);
    goalForm.name.addEventListener("input", later);
    if (button) {
      button.addEventListener("click", (event) => { event.preventDefault(); asked = ""; ask(); });
    }
  }

  // the add-source form: only the fields of the chosen type
  const sourceForm = document.getElementById("add-source");
  if (sourceForm) {
    const sync = () => {
      const kind = (sourceForm.querySelector("input[name=type]:checked") || {}).value || "rss";
      sourceForm.querySelectorAll("[data-for-type]").forEach((part) => {
        part.hidden = !part.dataset.forType.split(" ").includes(kind);
      });
    };
    sourceForm.addEventListener("change", sync);
    sync();
  }

  // OPML import: say that it is working (the report comes with the answer)
  document.querySelectorAll("form[data-progress]").forEach((form) => {
    form.addEventListener("submit", () => {
      const note = form.querySelector("[data-progress-text]");
      if (note) note.hidden = false;
      const submit = form.querySelector("button[type=submit]");
      if (submit) submit.disabled = true;
    });
  });

  document.documentElement.dataset.js = "ready";  // the handlers above are in place
})();
