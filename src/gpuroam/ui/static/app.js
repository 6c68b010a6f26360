// The dashboard: polls the control plane once a second (status, regions, traffic), follows the
// events stream, and draws the map, the panels and the timeline from what it got.

import {
  Unauthorized,
  adoptTokenFromFragment,
  api,
  followEvents,
  forgetToken,
  getToken,
  setToken,
  sleep,
} from "./api.js";
import { Controls } from "./controls.js";
import { RegionMap, drawWorld } from "./map.js";
import { renderServices, renderSummary, renderTraffic } from "./panels.js";
import { regionViews } from "./regions.js";
import { Timeline } from "./timeline.js";

const REFRESH_MS = 1000;
const FLASH_KINDS = new Set([
  "failover", "preempted", "chaos", "blocked", "stockout", "recovered", "failed", "expanded", "shrunk",
]);

const $ = (selector) => document.querySelector(selector);
let tokenDialogDismissed = false; // closed with Escape: wait for the Token button rather than nag
let toastTimer;

adoptTokenFromFragment();

const map = new RegionMap($("#map"));
const timeline = new Timeline($("#events"));
const controls = new Controls($(".controls-card"), {
  post: (path, body) =>
    api(path, { method: "POST", body }).catch((error) => {
      if (error instanceof Unauthorized) tokenRefused();
      throw error;
    }),
  report: toast,
});

drawWorld($("#map svg")).catch((error) => toast(`The map could not be drawn: ${error.message}`, false));
setUpTokenDialog();
refreshForever();
followEvents({
  onEvent(event) {
    timeline.add(event);
    const recent = Date.now() / 1000 - event.ts < 15; // not when replaying history
    if (event.region && FLASH_KINDS.has(event.kind) && recent) map.flash(event.region, event.kind);
  },
  onState(state) {
    const text = { live: "live", reconnecting: "reconnecting…", unauthorized: "waiting for a token" }[state];
    $("#events-state").textContent = text;
    $("#events-state").dataset.state = state;
  },
});

async function refresh() {
  const [status, regions, traffic] = await Promise.all([
    api("/status"),
    api("/regions"),
    api("/traffic").catch((error) => {
      if (error instanceof Unauthorized) throw error;
      return { available: false, reason: error.message };
    }),
  ]);
  const views = regionViews(regions, status.services, traffic);
  map.update(views);
  controls.update(status.services, regions);
  renderSummary($("#summary"), views, status.services, traffic);
  renderServices($("#services"), status.services, traffic);
  renderTraffic($("#traffic"), traffic, status.services);
}

async function refreshForever() {
  for (;;) {
    if (!getToken()) {
      connection("unauthorized", "no token");
      if (!tokenDialogDismissed) askForToken();
    } else {
      try {
        await refresh();
        connection("live", "live");
      } catch (error) {
        if (error instanceof Unauthorized) tokenRefused();
        else connection("offline", "control plane unreachable");
      }
    }
    await sleep(REFRESH_MS);
  }
}

function connection(state, text) {
  const element = $("#connection");
  element.dataset.state = state;
  element.textContent = text;
}

function tokenRefused() {
  forgetToken();
  tokenDialogDismissed = false;
  connection("unauthorized", "token refused");
  askForToken("That token was refused. The control plane's token is in its state dir.");
}

function setUpTokenDialog() {
  $("#token-dialog").addEventListener("cancel", () => (tokenDialogDismissed = true));
  $("#token-button").addEventListener("click", () => askForToken());
  $("#token-form").addEventListener("submit", () => {
    const token = $("#token-input").value.trim();
    if (token) setToken(token);
    $("#token-input").value = "";
  });
}

function askForToken(message) {
  const dialog = $("#token-dialog");
  if (message) $("#token-message").textContent = message;
  if (!dialog.open) dialog.showModal();
}

function toast(text, ok = true) {
  const element = $("#toast");
  element.textContent = text;
  element.dataset.ok = ok;
  element.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (element.hidden = true), ok ? 4000 : 8000);
}
