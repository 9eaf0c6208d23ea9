// Shared helpers of the server test scripts: argument parsing, a tiny assertion runner, raw
// HTTP requests (for what the openai client will not send), and /metrics parsing.
import http from 'node:http';
import net from 'node:net';

export function parse_args(argv) {
  const out = {};
  for (let i = 2; i < argv.length; i += 2) out[argv[i].replace(/^--/, '')] = argv[i + 1];
  if (!out['base-url']) throw new Error('--base-url http://127.0.0.1:PORT is required');
  return out;
}

let failures = 0;
let checks = 0;
export function check(cond, what) {
  ++checks;
  if (!cond) {
    ++failures;
    console.error(`FAIL: ${what}`);
  }
}
export function equal(a, b, what) {
  const ok = JSON.stringify(a) === JSON.stringify(b);
  check(ok, `${what}: expected ${JSON.stringify(b)}, found ${JSON.stringify(a)}`);
}

// Runs named async cases in order; a throw fails the case. Exits 1 on any failure.
export async function run_cases(cases) {
  for (const [name, fn] of cases) {
    const before = failures;
    const t0 = Date.now();
    try {
      await fn();
    } catch (e) {
      ++failures;
      console.error(`FAIL: ${name}: threw ${e && e.stack ? e.stack : e}`);
    }
    console.log(`${failures === before ? 'ok  ' : 'FAIL'} ${name} (${Date.now() - t0} ms)`);
  }
  console.log(`${checks} checks, ${failures} failures`);
  process.exit(failures ? 1 : 0);
}

// One HTTP request; resolves {status, headers, body}.
export function request(base, method, path, { body, headers = {}, agent } = {}) {
  const url = new URL(path, base);
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, agent }, (res) => {
      const parts = [];
      res.on('data', (d) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(parts).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

// Bytes straight onto a socket (malformed HTTP); resolves with everything the server sent
// before it closed, or after `timeout_ms`.
export function raw_exchange(base, bytes, timeout_ms = 5000) {
  const url = new URL(base);
  return new Promise((resolve) => {
    const sock = net.connect(Number(url.port), url.hostname);
    const parts = [];
    const timer = setTimeout(() => { sock.destroy(); resolve(Buffer.concat(parts).toString('utf8')); }, timeout_ms);
    sock.on('connect', () => sock.write(bytes));
    sock.on('data', (d) => parts.push(d));
    sock.on('error', () => {});
    sock.on('close', () => { clearTimeout(timer); resolve(Buffer.concat(parts).toString('utf8')); });
  });
}

// {name{labels}: value} from the Prometheus text format.
export async function scrape(base) {
  const r = await request(base, 'GET', '/metrics');
  const out = {};
  for (const line of r.body.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out[line.slice(0, at)] = Number(line.slice(at + 1));
  }
  return out;
}

export function metric(samples, name) {
  for (const [k, v] of Object.entries(samples)) if (k === name || k.startsWith(name + '{')) return v;
  return undefined;
}

// Polls /metrics until the engine is idle and the KV pool is empty; returns the last sample.
export async function wait_pool_empty(base, timeout_ms = 20000) {
  const t0 = Date.now();
  let s;
  while (Date.now() - t0 < timeout_ms) {
    s = await scrape(base);
    if (metric(s, 'xyserve:num_requests_running') === 0 && metric(s, 'xyserve:num_requests_waiting') === 0 &&
        metric(s, 'xyserve:kv_cache_usage_perc') === 0) return s;
    await new Promise((r) => setTimeout(r, 50));
  }
  return s;
}
