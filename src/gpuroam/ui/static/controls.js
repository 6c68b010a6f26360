// The controls: expand a service into a region, fail a region or a GPU type, recover.
// Each calls the control plane's API; the map and the timeline show what follows.

import { h } from "./dom.js";

const ANY_REGION = { value: "", label: "all regions" };
const ANY_GPU = { value: "", label: "all GPUs" };

export class Controls {
  /** post(path, body) -> Promise of the JSON answer; report(text, ok) shows the outcome. */
  constructor(root, { post, report }) {
    this.root = root;
    this.select = (id) => root.querySelector(`#${id}`);
    const act = (formId, request) => {
      const form = root.querySelector(`#${formId}`);
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const button = form.querySelector("button");
        button.disabled = true;
        try {
          const [path, body, describe] = request();
          report(describe(await post(path, body)), true);
        } catch (error) {
          report(error.message, false);
        } finally {
          button.disabled = false;
        }
      });
    };
    act("expand-form", () => {
      const service = this.select("expand-service").value;
      const region = this.select("expand-region").value;
      return [`/services/${encodeURIComponent(service)}/expand`, { region }, () => `${service} expands into ${region}`];
    });
    act("fail-region-form", () => ["/chaos/fail", { region: this.select("fail-region").value }, (r) => r.message]);
    act("fail-gpu-form", () => [
      "/chaos/fail",
      withoutEmpty({ gpu: this.select("fail-gpu").value, region: this.select("fail-gpu-region").value }),
      (r) => r.message,
    ]);
    act("recover-form", () => [
      "/chaos/recover",
      withoutEmpty({ region: this.select("recover-region").value, gpu: this.select("recover-gpu").value }),
      (r) => r.message,
    ]);
  }

  /** Fill the choices from what the control plane has now; a choice made is kept. */
  update(services, regions) {
    const names = services.filter((s) => !s.deleted).map((s) => s.name);
    const regionNames = regions.map((r) => r.name);
    const gpus = [...new Set(regions.flatMap((r) => r.gpus.map((g) => g.gpu)))].sort();
    options(this.select("expand-service"), names.map(plain));
    options(this.select("expand-region"), regionNames.map(plain));
    options(this.select("fail-region"), regionNames.map(plain));
    options(this.select("fail-gpu"), gpus.map(plain));
    options(this.select("fail-gpu-region"), [ANY_REGION, ...regionNames.map(plain)]);
    options(this.select("recover-region"), [ANY_REGION, ...regionNames.map(plain)]);
    options(this.select("recover-gpu"), [ANY_GPU, ...gpus.map(plain)]);
    this.root.querySelector("#expand-form button").disabled = !names.length;
  }
}

function plain(value) {
  return { value, label: value };
}

function options(select, choices) {
  const key = JSON.stringify(choices);
  if (select.dataset.key === key) return;
  const chosen = select.value;
  select.dataset.key = key;
  select.replaceChildren(...choices.map((c) => h("option", { value: c.value }, c.label)));
  if (choices.some((c) => c.value === chosen)) select.value = chosen;
}

function withoutEmpty(body) {
  return Object.fromEntries(Object.entries(body).filter(([, value]) => value));
}
