// The summary chips, the services panel (endpoint and replicas) and the traffic panel.

import { age, gpuShort, h, millis, rate, replaceIfChanged } from "./dom.js";

const STATE_ORDER = { ready: 0, provisioning: 1, draining: 2, failed: 3 };
// Only a web address becomes a link: an endpoint is what a provider reported, and a `javascript:` one
// must never be clickable (the page's CSP would block it too; this does not rely on that).
const WEB_URL = /^https?:\/\//i;

export function renderSummary(list, views, services, traffic) {
  const live = services.filter((s) => !s.deleted);
  const replicas = live.flatMap((s) => s.replicas);
  const ready = replicas.filter((r) => r.state === "ready");
  const starting = replicas.filter((r) => r.state === "provisioning");
  const serving = views.filter((v) => v.state === "serving").length;
  const failed = views.filter((v) => v.state === "failed").length;
  const rps = traffic && traffic.available ? sum(Object.values(traffic.traffic || {}).map(totalRps)) : null;
  const gpus = [...new Set(ready.map((r) => gpuShort(r.gpu)))].join(" + ");
  const chips = [
    chip("serving", `${serving}/${views.length}`, "regions serving"),
    chip("ready", `${ready.length}`, ready.length === 1 ? "replica ready" : "replicas ready"),
    starting.length ? chip("starting", `${starting.length}`, "starting") : null,
    failed ? chip("failed", `${failed}`, failed === 1 ? "region down" : "regions down") : null,
    gpus ? chip("gpu", gpus, "", "on ") : null,
    rps !== null ? chip("traffic", rate(rps), "req/s") : null,
  ].filter(Boolean);
  replaceIfChanged(list, chips.map((c) => c.textContent).join("|"), () => chips);
}

function chip(kind, value, label, before = "") {
  return h("li", { dataset: { kind } }, before, h("strong", {}, value), label ? ` ${label}` : "");
}

function totalRps(service) {
  return sum(Object.values(service.regions || {}).map((r) => r.rps));
}

function sum(values) {
  return values.reduce((total, value) => total + value, 0);
}

export function renderServices(container, services, traffic) {
  const shown = services.filter((s) => !s.deleted || s.replicas.length);
  // Redrawn when what it shows changes (not for ages and queues, updated in place), so a link can be clicked.
  const key = JSON.stringify(
    shown.map((s) => [
      s.name, s.endpoint, s.deleted, s.desired, s.reason, s.cost_per_hour, s.on_demand_cost_per_hour,
      s.replicas.map((r) => [r.id, r.state, r.capacity]),
    ]),
  );
  replaceIfChanged(container, key, () =>
    shown.length ? shown.map(serviceCard) : h("p", { class: "empty" }, "No service yet: gpuroam up SPEC"),
  );
  const queues = new Map(((traffic && traffic.available && traffic.services) || []).map((s) => [s.name, s]));
  for (const service of shown) {
    const queue = container.querySelector(`[data-queue-of="${CSS.escape(service.name)}"]`);
    if (queue) queue.textContent = queueText(queues.get(service.name));
    for (const replica of service.replicas) {
      const cell = container.querySelector(`[data-age-of="${CSS.escape(replica.id)}"]`);
      if (cell) cell.textContent = age(replica.age_s);
    }
  }
}

function queueText(seen) {
  if (!seen || typeof seen.in_flight !== "number") return "";
  return ` · ${seen.in_flight} in flight, ${seen.held} waiting for a replica`;
}

/** The service's $/hour and, where Spot makes a difference, what all on-demand would cost. */
function costText(service) {
  if (typeof service.cost_per_hour !== "number") return "";
  const cost = ` · $${service.cost_per_hour.toFixed(2)}/h`;
  const onDemand = service.on_demand_cost_per_hour;
  if (typeof onDemand !== "number" || onDemand <= service.cost_per_hour) return cost;
  const saved = Math.round((1 - service.cost_per_hour / onDemand) * 100);
  return `${cost} (all on-demand $${onDemand.toFixed(2)}/h, Spot saves ${saved}%)`;
}

function scaleLine(service, ready) {
  const cost = costText(service);
  return h(
    "p",
    { class: "scale" },
    h("span", { class: "label" }, "size"),
    h(
      "span",
      {},
      `${ready.length} ready of ${service.desired} wanted${cost}`,
      h("span", { dataset: { queueOf: service.name } }, ""),
    ),
    service.reason ? h("span", { class: "reason" }, service.reason) : null,
  );
}

function serviceCard(service) {
  const ready = service.replicas.filter((r) => r.state === "ready");
  const regions = new Set(ready.map((r) => r.region));
  const state = service.deleted ? "draining" : ready.length ? "ready" : "provisioning";
  const summary = service.deleted
    ? "being removed"
    : ready.length
      ? `serving in ${regions.size} region${regions.size === 1 ? "" : "s"}`
      : "starting";
  const replicas = [...service.replicas].sort(
    (a, b) => a.region.localeCompare(b.region) || STATE_ORDER[a.state] - STATE_ORDER[b.state],
  );
  return h(
    "article",
    { class: "service", dataset: { service: service.name } },
    h(
      "header",
      {},
      h("h3", {}, service.name),
      h("span", { class: "pill", dataset: { state } }, summary),
    ),
    service.endpoint
      ? h(
          "p",
          { class: "endpoint" },
          h("span", { class: "label" }, "endpoint"),
          WEB_URL.test(service.endpoint)
            ? h("a", { href: service.endpoint, target: "_blank", rel: "noopener" }, service.endpoint)
            : h("code", {}, service.endpoint),
        )
      : null,
    typeof service.desired === "number" ? scaleLine(service, ready) : null,
    replicas.length
      ? h(
          "table",
          { class: "replicas" },
          h("thead", {}, h("tr", {}, ["Region", "GPU", "Capacity", "$/h", "State", "Age"].map((t) => h("th", {}, t)))),
          h(
            "tbody",
            {},
            replicas.map((r) =>
              h(
                "tr",
                { dataset: { replica: r.id, state: r.state }, title: r.reason || r.id },
                h("td", {}, r.region),
                h("td", {}, r.gpu),
                h("td", { dataset: { capacity: r.capacity || "on-demand" } }, r.capacity === "spot" ? "Spot" : "on-demand"),
                h("td", { class: "num" }, typeof r.price_per_hour === "number" ? `$${r.price_per_hour.toFixed(2)}` : "?"),
                h("td", {}, h("span", { class: "pill", dataset: { state: r.state } }, r.state)),
                h("td", { class: "num", dataset: { ageOf: r.id } }, age(r.age_s)),
              ),
            ),
          ),
        )
      : h("p", { class: "empty" }, "no replica yet"),
  );
}

export function renderTraffic(container, traffic, services) {
  if (!traffic) return;
  if (!traffic.available) {
    const why = `No traffic figures: ${traffic.reason}.`;
    replaceIfChanged(container, `off:${why}`, () => h("p", { class: "empty" }, why));
    return;
  }
  const rows = [];
  const failures = [];
  for (const [service, entry] of Object.entries(traffic.traffic || {})) {
    for (const [region, figures] of Object.entries(entry.regions || {})) rows.push({ service, region, ...figures });
    if (entry.failed_per_s > 0) failures.push({ service, perSecond: entry.failed_per_s });
  }
  if (!rows.some((r) => r.rps > 0) && !failures.length) {
    const endpoint = services.find((s) => !s.deleted && s.endpoint)?.endpoint;
    replaceIfChanged(container, `idle:${endpoint}`, () => idleHint(endpoint));
    return;
  }
  const max = Math.max(...rows.map((r) => r.rps), 0.1);
  const many = new Set(rows.map((r) => r.service)).size > 1;
  rows.sort((a, b) => b.rps - a.rps);
  container.dataset.key = ""; // redrawn every time: the figures move
  container.replaceChildren(
    h(
      "table",
      { class: "traffic-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Region"), h("th", {}), numberHeader("req/s"), numberHeader("p50"))),
      h(
        "tbody",
        {},
        rows.map((r) =>
          h(
            "tr",
            { dataset: { region: r.region } },
            h("td", {}, r.region, many ? h("span", { class: "hint" }, ` ${r.service}`) : null),
            h("td", { class: "bar-cell" }, bar(r.rps / max)),
            h("td", { class: "num" }, rate(r.rps)),
            h("td", { class: "num" }, millis(r.p50_ms)),
          ),
        ),
        failures.map((f) =>
          h(
            "tr",
            { class: "failed" },
            h("td", { colspan: 2 }, `${f.service}: answered with an error by the gateway`),
            h("td", { class: "num" }, rate(f.perSecond)),
            h("td", {}),
          ),
        ),
      ),
    ),
  );
}

function idleHint(endpoint) {
  const example = `curl ${endpoint}/sdapi/v1/txt2img -H 'content-type: application/json' -d '{"prompt":"a cat"}'`;
  return [
    h("p", { class: "empty" }, "No requests in the last 10 seconds."),
    endpoint ? h("p", { class: "hint" }, "Send some: ", h("code", {}, example)) : null,
  ];
}

function numberHeader(text) {
  return h("th", { class: "num" }, text);
}

function bar(fraction) {
  const fill = h("span", { class: "fill" });
  fill.style.width = `${Math.max(2, Math.round(fraction * 100))}%`;
  return h("span", { class: "bar" }, fill);
}
