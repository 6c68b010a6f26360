// The world map: land from /ui/world-land.svg (package data: nothing is fetched from elsewhere),
// an equirectangular projection in degrees (x = lon + 180, y = 90 - lat), and one marker per
// region. Markers are buttons laid over the SVG, placed in percent of the map's box.

import { age, gpuShort, h, millis, rate } from "./dom.js";

const VIEW = { x: 0, y: 4, width: 360, height: 150 }; // the <svg> viewBox: lat 86 N to 64 S

export async function drawWorld(svg) {
  const graticule = svg.querySelector("#graticule");
  const lines = [];
  for (let lon = -150; lon <= 150; lon += 30) lines.push(`M${lon + 180} 0V180`);
  for (let lat = -60; lat <= 60; lat += 30) lines.push(`M0 ${90 - lat}H360`);
  graticule.append(svgElement("path", { d: lines.join("") }));
  graticule.append(svgElement("path", { d: "M0 90H360", class: "equator" }));
  const response = await fetch("/ui/world-land.svg");
  const parsed = new DOMParser().parseFromString(await response.text(), "image/svg+xml");
  svg.querySelector("#land").setAttribute("d", parsed.getElementById("land").getAttribute("d"));
}

function svgElement(tag, attributes) {
  const element = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

function place(element, lat, lon) {
  element.style.left = `${((lon + 180 - VIEW.x) / VIEW.width) * 100}%`;
  element.style.top = `${((90 - lat - VIEW.y) / VIEW.height) * 100}%`;
}

export class RegionMap {
  constructor(container) {
    this.layer = container.querySelector("#markers");
    this.detail = container.querySelector("#region-detail");
    this.markers = new Map(); // region name -> button
    this.views = new Map();
    this.pinned = null; // region whose detail stays open after a click
    this.hovered = null;
    container.addEventListener("click", (event) => {
      if (!event.target.closest(".marker, .region-detail")) this.select(null);
    });
  }

  update(views) {
    this.views = new Map(views.map((v) => [v.name, v]));
    for (const view of views) {
      if (view.lat === null || view.lon === null) continue; // a region the catalog cannot place
      const marker = this.markers.get(view.name) || this.addMarker(view);
      marker.dataset.state = view.state;
      marker.dataset.degraded = view.degraded;
      marker.dataset.gpus = [...new Set(view.replicas.filter((r) => r.state === "ready").map((r) => r.gpu))].join(" ");
      marker.setAttribute("aria-label", `${view.name}: ${view.state}, ${view.why}`);
      marker.querySelector(".stats").textContent = markerStats(view);
    }
    this.showDetail();
  }

  addMarker(view) {
    const marker = h(
      "button",
      { class: "marker", type: "button", dataset: { region: view.name } },
      h("span", { class: "dot" }),
      h("span", { class: "label" }, h("span", { class: "region-name" }, view.name), h("span", { class: "stats" })),
    );
    if (view.lon > 120) marker.classList.add("label-left");
    place(marker, view.lat, view.lon);
    marker.addEventListener("mouseenter", () => this.hover(view.name));
    marker.addEventListener("mouseleave", () => this.hover(null));
    marker.addEventListener("focus", () => this.hover(view.name));
    marker.addEventListener("blur", () => this.hover(null));
    marker.addEventListener("click", () => this.select(this.pinned === view.name ? null : view.name));
    this.layer.append(marker);
    this.markers.set(view.name, marker);
    return marker;
  }

  hover(name) {
    this.hovered = name;
    this.showDetail();
  }

  select(name) {
    this.pinned = name;
    for (const [region, marker] of this.markers) marker.classList.toggle("selected", region === name);
    this.showDetail();
  }

  /** Briefly ring a region's marker when something happens there (a failover, a chaos action...). */
  flash(region, kind) {
    const marker = this.markers.get(region);
    if (!marker) return;
    marker.dataset.flash = kind;
    clearTimeout(marker.flashTimer);
    marker.flashTimer = setTimeout(() => delete marker.dataset.flash, 4000);
  }

  showDetail() {
    const view = this.views.get(this.hovered || this.pinned);
    if (!view || view.lat === null) {
      this.detail.hidden = true;
      return;
    }
    this.detail.hidden = false;
    this.detail.dataset.region = view.name;
    this.detail.replaceChildren(...detailContent(view).filter(Boolean));
    place(this.detail, view.lat, view.lon);
    this.detail.classList.toggle("to-left", view.lon > 40);
    this.detail.classList.toggle("below", view.lat > 15); // northern regions open downwards, the rest upwards
  }
}

function markerStats(view) {
  const ready = view.replicas.filter((r) => r.state === "ready");
  const gpus = [...new Set(ready.map((r) => gpuShort(r.gpu)))].join(" ");
  const parts = [];
  if (ready.length) parts.push(`${ready.length}× ${gpus}`);
  else if (view.short) parts.push(view.short);
  if (view.traffic && view.traffic.rps > 0) parts.push(`${rate(view.traffic.rps)} req/s`);
  return parts.join(" · ");
}

function detailContent(view) {
  const now = Date.now() / 1000;
  const replicas = view.replicas.length
    ? h(
        "table",
        {},
        h("tr", {}, h("th", {}, "service"), h("th", {}, "GPU"), h("th", {}, "state"), h("th", {}, "age")),
        view.replicas.map((r) =>
          h(
            "tr",
            {},
            h("td", { title: r.id }, r.service),
            h("td", {}, r.gpu),
            h("td", {}, h("span", { class: "pill", dataset: { state: r.state } }, r.state)),
            h("td", {}, age(r.age_s)),
          ),
        ),
      )
    : h("p", { class: "empty" }, "no replica here");
  const gpus = h(
    "ul",
    { class: "gpus" },
    view.gpus.map((g) =>
      h(
        "li",
        { dataset: { blocked: g.blocked_until !== null } },
        h("span", {}, g.gpu),
        h(
          "span",
          { class: "free" },
          slotText(g.free, g.blocked_until, now) + (g.spot ? ` · Spot ${slotText(g.spot_free, g.spot_blocked_until, now)}` : ""),
        ),
      ),
    ),
  );
  const health = view.backends.length
    ? h(
        "ul",
        { class: "backends" },
        view.backends.map((b) =>
          h(
            "li",
            { dataset: { usable: b.usable } },
            `${gpuShort(b.gpu)} ${b.usable ? "usable" : b.healthy ? "ejected" : "unhealthy"}`,
            b.outstanding ? ` · ${b.outstanding} in flight` : "",
          ),
        ),
      )
    : null;
  const traffic = view.traffic
    ? h("p", { class: "traffic-line" }, `${rate(view.traffic.rps)} req/s · p50 ${millis(view.traffic.p50_ms)}`)
    : null;
  return [
    h(
      "header",
      {},
      h("strong", {}, view.name),
      view.city ? h("span", { class: "city" }, view.city) : null,
      h("span", { class: "pill", dataset: { state: view.state } }, view.state),
    ),
    h("p", { class: "why" }, view.why),
    traffic,
    h("h3", {}, "Replicas"),
    replicas,
    h("h3", {}, "GPUs"),
    gpus,
    health ? h("h3", {}, "Gateway health") : null,
    health,
  ];
}

/** Free slots of one kind of capacity (on demand or Spot), or how long it stays blocked. */
function slotText(free, blockedUntil, now) {
  if (blockedUntil !== null && blockedUntil !== undefined) return `blocked ${age(blockedUntil - now)} more`;
  return free === null || free === undefined ? "free: ?" : `${free} free`;
}
