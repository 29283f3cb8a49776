// Entry point of the web UI: wires the modules together and routes the socket's messages.
//   state.js       the one state object, and the types of the protocol's messages
//   connection.js  the WebSocket: reconnects with backoff and jitter, shows its state
//   devices.js     the virtual device grid (grid-model.js: its pure decisions and page cache)
//   groups.js      the group tree: aggregates, alerting counts, worst severity
//   alerts.js      the alerts panel (alert-model.js: its pure decisions)
//   detail.js      a device's live values and history chart (chart.js: uPlot and its data)

import { state, setToken } from "./state.js";
import { $ } from "./util.js";
import { createConnection } from "./connection.js";
import * as grid from "./devices.js";
import * as groups from "./groups.js";
import * as alerts from "./alerts.js";
import * as detail from "./detail.js";
import { worstSeverityBySubject } from "./alert-model.js";

const connection = createConnection({
  // A fresh socket knows no view and no group subscriptions yet: send both.
  onOpen() {
    grid.forgetSentView();
    grid.sendView(true);
    groups.forgetSentGroups();
    groups.sendGroups();
  },
  onMessage(msg) {
    switch (msg.type) {
      // A snapshot may answer an older view; applyStates ignores devices no longer shown.
      case "snapshot":
        grid.applyStates(msg.devices ?? [], { flashRows: false });
        toDetail(msg.devices);
        groups.applyAggregates(msg.groups ?? []);
        alerts.onSnapshot(msg.alerts ?? []);
        break;
      case "update":
        grid.applyStates(msg.devices ?? [], { flashRows: true });
        toDetail(msg.devices);
        groups.applyAggregates(msg.groups ?? []);
        break;
      case "alert":
        alerts.onAlert(msg.alert);
        break;
      case "error":
        // Most likely a refused (rate-limited) view or groups change: forget what was sent,
        // so the next refreshes (10 s) send both again, with no resend loop if it persists.
        // Or the refusal of an alert command, which the alerts panel shows.
        console.warn("iotmon server:", msg.message);
        if (msg.alert === undefined) {
          grid.forgetSentView();
          groups.forgetSentGroups();
        }
        alerts.onError(msg.message, msg.alert);
        break;
    }
  },
  onStatus: () => alerts.onConnection(),
});

/** The open panel's device is in the view even when off screen: its states go to the panel. */
function toDetail(devices = []) {
  if (!state.detail.id) return;
  for (const d of devices) if (d.id === state.detail.id) detail.onDeviceState(d);
}

grid.initGrid({
  sendView: (ids) => connection.send({ type: "view", devices: ids }),
  openDetail: detail.openDetail,
  onAges: detail.renderDetailHead,
  unauthorized: askForToken,
});
groups.initGroups({
  sendGroups: (list) => connection.send({ type: "groups", groups: list }),
  showGroup: grid.showGroup,
  onTree: alerts.setGroupChoices,
});
alerts.initAlerts({
  send: (msg) => connection.send(msg),
  onChange() {
    groups.applyAlerts();
    grid.applySeverities(worstSeverityBySubject(state.alerts.byId.values(), Date.now()));
  },
});
detail.initDetail({ markSelected: grid.markSelected, viewChanged: grid.viewChanged });

// --- Tabs (phone widths): one panel at a time; arrow keys move between tabs -----------------
const tabs = [...document.querySelectorAll("#tabs [role=tab]")];
function showTab(/** @type {HTMLElement} */ tab, focus = false) {
  for (const t of tabs) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
  }
  document.body.dataset.tab = tab.dataset.tab;
  if (focus) tab.focus();
}
$("tabs").addEventListener("click", (ev) => {
  const tab = /** @type {HTMLElement} */ (ev.target).closest("[role=tab]");
  if (tab) showTab(tab);
});
$("tabs").addEventListener("keydown", (ev) => {
  const i = tabs.indexOf(/** @type {any} */ (document.activeElement));
  if (i < 0 || (ev.key !== "ArrowRight" && ev.key !== "ArrowLeft")) return;
  showTab(tabs[(i + (ev.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length], true);
});
// Choosing a group in the tree on a phone shows its devices.
$("tree").addEventListener("click", (ev) => {
  if (/** @type {HTMLElement} */ (ev.target).closest(".name") && getComputedStyle($("tabs")).display !== "none") showTab(tabs[0]);
});

// A dashboard configured with a token needs it on /api and /ws: asks for it in the error
// line; loading resumes once one is given.
function askForToken() {
  const error = $("error");
  const form = document.createElement("form");
  const label = document.createElement("label");
  const input = document.createElement("input");
  const button = document.createElement("button");
  label.textContent = state.token ? "That viewer token was refused. Token: " : "This dashboard needs a viewer token: ";
  input.id = "token";
  input.type = "password";
  input.autocomplete = "off";
  button.textContent = "Connect";
  label.append(input);
  form.append(label, " ", button);
  form.onsubmit = (ev) => {
    ev.preventDefault();
    setToken(input.value.trim());
    error.replaceChildren();
    grid.load();
    groups.loadGroups();
    connection.restart();
  };
  error.replaceChildren(form);
  input.focus();
}

setInterval(grid.refreshAges, 1000);
groups.renderCrumbs();
alerts.render();
connection.start();
grid.load();
groups.loadGroups();
