// Load test of a running `xyserve serve`: N concurrent streaming completions (0 errors, every
// stream ends with [DONE], the KV pool empty afterwards, read from /metrics), then M clients
// that disconnect mid-stream (their requests cancelled, the pool empty again).
//   node tools/server_tests/load_test.mjs --base-url URL [--concurrent 2000] [--disconnects 200]
//     [--max-tokens 4]
import http from 'node:http';
import { parse_args, check, equal, run_cases, scrape, metric, wait_pool_empty } from './common.mjs';

const args = parse_args(process.argv);
const base = args['base-url'];
const num_concurrent = Number(args.concurrent || 2000);
const num_disconnects = Number(args.disconnects || 200);
const max_tokens = Number(args['max-tokens'] || 4);
const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
const url = new URL('/v1/completions', base);

// One streaming request. `leave_after_first`: destroy the connection at the first event.
function stream_one(i, { leave_after_first = false, tokens = max_tokens } = {}) {
  const body = JSON.stringify({ prompt: `request ${i % 97}: tell me about ${i}`, max_tokens: tokens, stream: true,
    ignore_eos: true, temperature: 0.8, seed: i });
  return new Promise((resolve) => {
    const req = http.request(url, { method: 'POST', agent, headers: { 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => {
        text += d;
        if (leave_after_first && text.includes('data: ')) {
          req.destroy();
          resolve({ left: true });
        }
      });
      res.on('end', () => resolve({ status: res.statusCode, text }));
      res.on('error', (e) => resolve({ error: String(e) }));
    });
    req.on('error', (e) => resolve(leave_after_first ? { left: true } : { error: String(e) }));
    req.end(body);
  });
}

function events_of(text) {
  return text.split('\n\n').filter((e) => e.startsWith('data: ')).map((e) => e.slice(6));
}

await run_cases([
  [`${num_concurrent} concurrent streams: 0 errors, all end with [DONE], pool empty after`, async () => {
    const t0 = Date.now();
    const results = await Promise.all(Array.from({ length: num_concurrent }, (_, i) => stream_one(i)));
    const seconds = (Date.now() - t0) / 1000;
    let errors = 0, done = 0, tokens = 0;
    for (const r of results) {
      if (r.error || r.status !== 200) { ++errors; continue; }
      const ev = events_of(r.text);
      if (ev.at(-1) === '[DONE]') ++done;
      for (const e of ev.slice(0, -1)) {
        const j = JSON.parse(e);
        if (j.choices.length && j.choices[0].text) ++tokens;
      }
    }
    console.log(`load: ${num_concurrent} streams in ${seconds.toFixed(2)} s, ${errors} errors, ${done} ended with [DONE], ` +
                `${(num_concurrent / seconds).toFixed(1)} req/s`);
    equal(errors, 0, 'errors');
    equal(done, num_concurrent, 'streams ending with [DONE]');
    const s = await wait_pool_empty(base);
    equal(metric(s, 'xyserve:num_requests_running'), 0, 'running after');
    equal(metric(s, 'xyserve:kv_cache_usage_perc'), 0, 'kv usage after');
    check(metric(s, 'xyserve:generation_tokens_total') >= num_concurrent * max_tokens, 'generation tokens counted');
    check(metric(s, 'xyserve:time_to_first_token_seconds_count') >= num_concurrent, 'TTFT observed per request');
  }],
  [`${num_disconnects} clients leave mid-stream: requests cancelled, pool empty after`, async () => {
    const before = await scrape(base);
    const aborts_before = before['xyserve:request_success_total{model_name="' + modelname(before) + '",finished_reason="abort"}'] || 0;
    const results = await Promise.all(Array.from({ length: num_disconnects }, (_, i) =>
      stream_one(100000 + i, { leave_after_first: true, tokens: 400 })));
    equal(results.filter((r) => r.left).length, num_disconnects, 'clients left');
    const t0 = Date.now();
    const s = await wait_pool_empty(base);
    console.log(`disconnects: pool empty ${Date.now() - t0} ms after the last client left`);
    equal(metric(s, 'xyserve:num_requests_running'), 0, 'running after');
    equal(metric(s, 'xyserve:num_requests_waiting'), 0, 'waiting after');
    equal(metric(s, 'xyserve:kv_cache_usage_perc'), 0, 'kv usage after');
    const aborts = s['xyserve:request_success_total{model_name="' + modelname(s) + '",finished_reason="abort"}'];
    // A request that finished its 400 tokens before the disconnect was seen is not an abort.
    check(aborts - aborts_before >= num_disconnects * 0.9, `aborted requests: ${aborts - aborts_before} of ${num_disconnects}`);
  }],
]);

function modelname(samples) {
  for (const k of Object.keys(samples)) {
    const m = k.match(/^xyserve:num_requests_running\{model_name="(.*)"\}$/);
    if (m) return m[1];
  }
  return '';
}
