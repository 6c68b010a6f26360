// The events timeline, newest first: up, placed, stockout, blocked, ready, failover, preempted, drained,
// recovered, chaos, expanded, shrunk... Events arrive one by one from the stream and are drawn once a frame.

import { clock, h } from "./dom.js";

const KEEP = 300; // rows kept on the page
const FRESH_S = 15; // an event this recent when it arrives is highlighted as new

export class Timeline {
  constructor(list) {
    this.list = list;
    this.pending = [];
    this.empty = h("li", { class: "empty" }, "No events yet.");
    this.list.append(this.empty);
  }

  add(event) {
    this.pending.push(event);
    if (this.pending.length === 1) requestAnimationFrame(() => this.flush());
  }

  flush() {
    const events = this.pending.splice(0);
    const now = Date.now() / 1000;
    const rows = events.reverse().map((event) => row(event, now - event.ts < FRESH_S));
    this.empty.remove();
    this.list.prepend(...rows);
    while (this.list.children.length > KEEP) this.list.lastElementChild.remove();
  }
}

function row(event, fresh) {
  // Where it happened, unless the message names the replica already (its id names service, region and GPU).
  const named = event.replica && event.message.includes(event.replica);
  const where = named ? "" : [event.service, event.region, event.gpu].filter(Boolean).join(" · ");
  return h(
    "li",
    { class: fresh ? "event fresh" : "event", dataset: { kind: event.kind, id: event.id } },
    h("time", { datetime: new Date(event.ts * 1000).toISOString() }, clock(event.ts)),
    h("span", { class: "kind" }, event.kind),
    h("span", { class: "message" }, event.message),
    where ? h("span", { class: "where" }, where) : null,
  );
}
