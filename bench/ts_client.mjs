// The official TypeScript SDK client, timing `echo` calls to several stdio servers side by side.
//
//   node bench/ts_client.mjs SPEC.json
//
// SPEC: {"node_modules": DIR, "calls": N, "warmup": W, "block": B, "text": "ping",
//        "targets": [{"name": "...", "command": "...", "args": [...], "env": {...}, "tool": "echo"}, ...]}
// Every target is spawned and connected first (its own stdio session, held open), warmed up, then
// measured in alternating blocks (forward, then reverse order) so drift on a busy machine lands on all
// of them alike. Prints one JSON object: {"sdk": version, "results": {name: {"samples_ms": [...]} |
// {"error": "..."}}}. Used by bench/stdio_ts_bench.py, which installs the SDK under bench/.node.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));
// The SDK lives in the benchmark's own npm prefix (bench/.node), not beside this file.
const sdk = join(spec.node_modules, "@modelcontextprotocol", "sdk");
const load = (path) => import(pathToFileURL(join(sdk, "dist", "esm", path)).href);
const { Client } = await load("client/index.js");
const { StdioClientTransport } = await load("client/stdio.js");
const sdkVersion = JSON.parse(readFileSync(join(sdk, "package.json"), "utf8")).version;

async function open(target) {
  const transport = new StdioClientTransport({
    command: target.command,
    args: target.args,
    env: { ...process.env, ...(target.env || {}) },
    stderr: "inherit",
  });
  const client = new Client({ name: "bench-ts-client", version: "1.0.0" });
  await client.connect(transport);
  // A proxy connects its upstream in the background: wait until the tool is listed.
  const deadline = Date.now() + 60_000;
  for (;;) {
    const { tools } = await client.listTools();
    if (tools.some((t) => t.name === target.tool)) break;
    if (Date.now() > deadline) throw new Error(`tool ${target.tool} never listed`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return client;
}

async function call(client, target) {
  const start = process.hrtime.bigint();
  const result = await client.callTool({ name: target.tool, arguments: { message: spec.text } });
  const elapsed = Number(process.hrtime.bigint() - start) / 1e6;
  const text = (result.content || []).map((c) => c.text || "").join("");
  if (result.isError || !text.includes(spec.text)) {
    throw new Error(`the echo call did not come back intact: ${JSON.stringify(text).slice(0, 200)}`);
  }
  return elapsed;
}

const results = {};
const live = [];
const clients = {};
for (const target of spec.targets) {
  try {
    clients[target.name] = await open(target);
    await call(clients[target.name], target);
    live.push(target);
    results[target.name] = { samples_ms: [] };
  } catch (err) {
    results[target.name] = { error: String(err && err.message ? err.message : err).split("\n")[0].slice(0, 300) };
  }
}
for (const target of live) {
  for (let i = 0; i < spec.warmup; i++) await call(clients[target.name], target);
}
const done = Object.fromEntries(live.map((t) => [t.name, 0]));
for (let round = 0; live.some((t) => done[t.name] < spec.calls); round++) {
  const order = round % 2 === 0 ? live : [...live].reverse();
  for (const target of order) {
    const n = Math.min(spec.block, spec.calls - done[target.name]);
    for (let i = 0; i < n; i++) {
      try {
        results[target.name].samples_ms.push(await call(clients[target.name], target));
      } catch (err) {
        results[target.name] = { error: String(err.message || err).slice(0, 300) };
        done[target.name] = spec.calls;
        break;
      }
      done[target.name] += 1;
    }
  }
}
for (const client of Object.values(clients)) {
  try {
    await client.close();
  } catch {
    // a target that already went away
  }
}
process.stdout.write(JSON.stringify({ sdk: sdkVersion, results }) + "\n");
