// Entry point of the web UI: wires the modules together and routes the socket's messages.
//   state.js       the one state object, and the types of the protocol's messages
//   connection.js  the WebSocket: reconnects with backoff and jitter, shows its state
//   devices.js     the paged device grid, search and pager
//   groups.js      the group tree: aggregates, alerting counts, worst severity
//   alerts.js      the alerts panel (alert-model.js: its pure decisions)
//   detail.js      a device's history chart

import { state, setToken } from "./state.js";
import { $ } from "./util.js";
import { createConnection } from "./connection.js";
import * as grid from "./devices.js";
import * as groups from "./groups.js";
import * as alerts from "./alerts.js";
import * as detail from "./detail.js";

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
        groups.applyAggregates(msg.groups ?? []);
        alerts.onSnapshot(msg.alerts ?? []);
        break;
      case "update":
        grid.applyStates(msg.devices ?? [], { flashRows: true });
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

grid.initGrid({
  sendView: (ids) => connection.send({ type: "view", devices: ids }),
  openDetail: detail.openDetail,
  onAges: detail.renderDetailHead,
  unauthorized: askForToken,
});
groups.initGroups({
  sendGroups: (list) => connection.send({ type: "groups", groups: list }),
  showGroup: grid.showGroup,
});
alerts.initAlerts({
  send: (msg) => connection.send(msg),
  onChange: groups.applyAlerts,
});
detail.initDetail({ markSelected: grid.markSelected });

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
    grid.load({ forceView: true });
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
grid.load({ forceView: true });
groups.loadGroups();
