// The dashboard's only script: keyboard shortcuts, live queue updates (server-sent events),
// SLA countdowns, and htmx error messages. No build step. htmx.min.js next to it is htmx
// 2.0.11 from the npm registry (package htmx.org, licence 0BSD).
(function () {
  "use strict";

  const body = document.body;
  const page = body.dataset.page;
  const me = body.dataset.actor || "";
  const messages = document.getElementById("messages");

  function say(text, kind) {
    const note = document.createElement("div");
    note.className = "message " + (kind || "info");
    note.setAttribute("role", "status");
    note.textContent = text;
    messages.replaceChildren(note);
  }

  // htmx drops 4xx/5xx answers by default; show their message instead.
  body.addEventListener("htmx:beforeSwap", function (event) {
    if (event.detail.xhr.status >= 400) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
      event.detail.target = messages;
      event.detail.swapOverride = "innerHTML";
    }
  });
  body.addEventListener("htmx:sendError", function () {
    say("The server cannot be reached; try again.", "error");
  });

  // --- SLA countdowns --------------------------------------------------------------------
  function countdown(due) {
    const seconds = Math.trunc((due - Date.now()) / 1000);
    const left = Math.abs(seconds);
    const hours = Math.floor(left / 3600);
    const minutes = Math.floor((left % 3600) / 60);
    const secs = left % 60;
    const pad = (n) => String(n).padStart(2, "0");
    const text = hours ? hours + "h " + pad(minutes) + "m" : minutes + "m " + pad(secs) + "s";
    return seconds >= 0 ? text + " left" : "overdue by " + text;
  }
  function tick() {
    document.querySelectorAll("time.sla[datetime]").forEach(function (el) {
      const due = Date.parse(el.getAttribute("datetime"));
      el.textContent = countdown(due);
      el.classList.toggle("overdue", due < Date.now());
    });
  }
  setInterval(tick, 1000);

  // --- keyboard ------------------------------------------------------------------------------
  function typing(target) {
    // A field in a dialog that has just closed keeps the focus until the browser's next
    // frame; a key pressed right after Escape is not typed into it.
    if (target.closest("dialog:not([open])")) return false;
    return target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName);
  }
  function rows() {
    return Array.from(document.querySelectorAll("tr.task"));
  }
  function select(index) {
    const all = rows();
    if (!all.length) return;
    const at = Math.max(0, Math.min(index, all.length - 1));
    all.forEach((row, n) => row.setAttribute("aria-selected", n === at ? "true" : "false"));
    all[at].scrollIntoView({ block: "nearest" });
  }
  function selected() {
    return rows().findIndex((row) => row.getAttribute("aria-selected") === "true");
  }
  function activate(el) {
    if (el.dataset.dialog) {
      const dialog = document.getElementById(el.dataset.dialog);
      dialog.showModal();
      const first = dialog.querySelector("input[type=radio]");
      if (first) first.focus();
    } else {
      el.click();
    }
  }
  function inDialog(event, dialog) {
    // Number keys pick the nth reason; Enter sends; Escape closes (the browser does that).
    const radios = dialog.querySelectorAll("input[type=radio]");
    const n = Number(event.key);
    if (Number.isInteger(n) && n >= 1 && n <= radios.length && event.target.type !== "text") {
      event.preventDefault();
      radios[n - 1].checked = true;
      radios[n - 1].focus();
    } else if (event.key === "Enter" && event.target.type !== "text") {
      event.preventDefault();
      dialog.querySelector("form").requestSubmit();
    }
  }
  if (page === "queue") select(0);

  document.addEventListener("click", function (event) {
    const closer = event.target.closest("[data-close]");
    if (closer) document.getElementById(closer.dataset.close).close();
  });

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const dialog = document.querySelector("dialog[open]");
    if (dialog) {
      inDialog(event, dialog);
      return;
    }
    if (typing(event.target)) return;
    if (event.key === "?") {
      document.getElementById("help").showModal();
      return;
    }
    if (page === "queue" && ["j", "k", "Enter", "o"].includes(event.key)) {
      event.preventDefault();
      const at = selected();
      if (event.key === "j") select(at + 1);
      else if (event.key === "k") select(at < 0 ? 0 : at - 1);
      else if (at >= 0) window.location.href = rows()[at].dataset.href;
      return;
    }
    const target = document.querySelector('[data-key="' + CSS.escape(event.key) + '"]');
    if (target) {
      event.preventDefault();
      activate(target);
    }
  });

  // --- live updates ----------------------------------------------------------------------
  // The server sends every waiting task with its state and claimant whenever that changes;
  // the first message is the starting point, later ones are compared with the one before.
  if (page === "queue" || page === "review") {
    let before = null;
    const source = new EventSource("/dashboard/events");
    source.addEventListener("queue", function (event) {
      body.dataset.live = "connected";
      const now = JSON.parse(event.data).tasks;
      if (before !== null) {
        const fresh = Object.keys(now).filter((id) => !(id in before));
        const claimed = Object.keys(now).filter(
          (id) => now[id].claimed_by && now[id].claimed_by !== me &&
            (!before[id] || before[id].claimed_by !== now[id].claimed_by)
        );
        if (fresh.length) {
          say(fresh.length + " new task" + (fresh.length > 1 ? "s" : "") + " in the queue", "info");
        }
        const current = document.getElementById("review");
        const task = current && current.dataset.task;
        if (task && claimed.includes(task)) {
          say("This task was just claimed by " + now[task].claimed_by, "warn");
          htmx.ajax("GET", "/dashboard/reviews/" + task, { target: "#review-status", swap: "outerHTML" });
        } else if (claimed.length && page === "queue") {
          say(claimed.map((id) => "task " + id.slice(0, 8) + " claimed by " + now[id].claimed_by).join("; "), "info");
        }
        if (page === "queue") {
          const at = selected();
          htmx.trigger(body, "queue-changed");
          body.addEventListener("htmx:afterSettle", () => at >= 0 && select(at), { once: true });
        }
      }
      before = now;
    });
    source.addEventListener("error", () => (body.dataset.live = "reconnecting"));
    // Signed out (here or in another tab), expired or disabled: reloading leads to sign-in.
    source.addEventListener("ended", function () {
      source.close();
      window.location.reload();
    });
    window.addEventListener("beforeunload", () => source.close());
  }
})();
