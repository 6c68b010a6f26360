// What state each region is in, from /api/v1/regions and /api/v1/status. Pure: no DOM.
//
//   serving   a replica there is ready
//   starting  a replica there is provisioning
//   failed    capacity lost or blocked there: no free GPU at all with nothing of ours running, a
//             GPU type blocked after a capacity failure, or a replica that failed lately
//   idle      none of that: capacity, unused
// A serving region that lost a GPU type lately (blocked, or a replica failed) is also `degraded`.

import { gpuShort } from "./dom.js";

export function regionViews(regions, services, traffic) {
  const replicas = services
    .filter((s) => !s.deleted)
    .flatMap((s) => s.replicas.map((r) => ({ ...r, service: s.name })));
  return regions.map((region) => {
    const here = replicas.filter((r) => r.region === region.name);
    const ready = here.filter((r) => r.state === "ready");
    const starting = here.filter((r) => r.state === "provisioning");
    const failed = here.filter((r) => r.state === "failed");
    const blocked = region.gpus.filter((g) => g.blocked_until !== null);
    const running = here.some((r) => ["ready", "provisioning", "draining"].includes(r.state)); // holding a GPU
    const noCapacity = region.gpus.length > 0 && region.gpus.every((g) => g.free === 0) && !running;
    // state, a sentence for the detail card, and a few words for the marker
    let [state, why, short] = ["idle", "GPUs free, nothing placed here", ""];
    const lost = unique([...blocked.map((g) => g.gpu), ...failed.map((r) => r.gpu)]);
    if (ready.length) {
      state = "serving";
      why = `serving on ${gpuList(ready)}` + (lost.length ? `; lost ${lost.join(", ")}` : "");
    } else if (starting.length) {
      [state, why, short] = ["starting", `starting on ${gpuList(starting)}`, "starting"];
    } else if (noCapacity) {
      [state, why, short] = ["failed", "no GPU capacity left here", "no capacity"];
    } else if (blocked.length) {
      const gpus = blocked.map((g) => g.gpu);
      why = `blocked after a capacity failure: ${gpus.join(", ")}`;
      [state, short] = ["failed", `${shortGpus(gpus)} blocked`];
    } else if (failed.length) {
      const gpus = failed.map((r) => r.gpu);
      [state, why, short] = ["failed", `lost its ${gpuList(failed)} replica`, `${shortGpus(gpus)} lost`];
    }
    return {
      ...region,
      state,
      why,
      short,
      degraded: state === "serving" && lost.length > 0,
      replicas: here,
      traffic: regionTraffic(traffic, region.name),
      backends: regionBackends(traffic, region.name),
    };
  });
}

/** Requests/s summed over services, and the busiest service's p50, for one region. */
export function regionTraffic(traffic, region) {
  if (!traffic || !traffic.available) return null;
  let rps = 0;
  let p50 = null;
  let busiest = -1;
  for (const service of Object.values(traffic.traffic || {})) {
    const entry = (service.regions || {})[region];
    if (!entry) continue;
    rps += entry.rps;
    if (entry.rps > busiest) [busiest, p50] = [entry.rps, entry.p50_ms];
  }
  return busiest < 0 ? null : { rps, p50_ms: p50 };
}

/** The gateway's view of the replicas in one region: how many are usable and healthy. */
export function regionBackends(traffic, region) {
  if (!traffic || !traffic.available) return [];
  return (traffic.services || []).flatMap((s) =>
    (s.backends || []).filter((b) => b.region === region).map((b) => ({ ...b, service: s.name })),
  );
}

function unique(values) {
  return [...new Set(values)];
}

function gpuList(replicas) {
  return unique(replicas.map((r) => r.gpu)).join(", ");
}

function shortGpus(gpus) {
  return unique(gpus.map(gpuShort)).join(" ");
}
