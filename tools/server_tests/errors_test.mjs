// Bad input against a running `xyserve serve`: each case gets its HTTP status and an
// OpenAI-style error object, and the server keeps serving afterwards. Expects a server started
// with --api-key KEY and --max-request-body-bytes 65536 and passed here as --api-key KEY.
//   node tools/server_tests/errors_test.mjs --base-url http://127.0.0.1:PORT --api-key KEY
import OpenAI from 'openai';
import { parse_args, check, equal, run_cases, request, raw_exchange } from './common.mjs';

const args = parse_args(process.argv);
const base = args['base-url'];
const key = args['api-key'];
const client = new OpenAI({ apiKey: key, baseURL: `${base}/v1`, maxRetries: 0, timeout: 30000 });
const auth = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };

// The error an openai client call raises: {status, error} or a failed check when it succeeds.
async function api_error(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  check(false, 'expected an error, the call succeeded');
  return {};
}

function is_error_object(body, status_what) {
  let j;
  try { j = JSON.parse(body); } catch { check(false, `${status_what}: body is JSON: ${body}`); return {}; }
  check(j.error && typeof j.error.message === 'string' && 'type' in j.error && 'param' in j.error && 'code' in j.error,
    `${status_what}: {"error": {message, type, param, code}}: ${body}`);
  return j.error || {};
}

async function post(path, body, headers = auth) {
  return request(base, 'POST', path, { body, headers });
}

const model = (await client.models.list()).data[0].id;
const ok_body = JSON.stringify({ model, prompt: 'hi', max_tokens: 2 });

await run_cases([
  ['malformed JSON is 400', async () => {
    const r = await post('/v1/completions', '{"prompt": "hi", ');
    equal(r.status, 400, 'status');
    is_error_object(r.body, 'malformed JSON');
  }],
  ['a body that is not an object is 400', async () => {
    const r = await post('/v1/chat/completions', '[1, 2]');
    equal(r.status, 400, 'status');
    is_error_object(r.body, 'array body');
  }],
  ['wrong types are 400 naming the field', async () => {
    for (const [field, value] of [['temperature', 'hot'], ['max_tokens', '5'], ['stream', 1], ['n', 1.5], ['stop', 7]]) {
      const e = await api_error(client.completions.create({ model, prompt: 'hi', max_tokens: 2, [field]: value }));
      equal(e.status, 400, `${field} status`);
      equal(e.error && e.error.param, field, `${field} param`);
    }
    const e = await api_error(client.chat.completions.create({ model, messages: [{ role: 'wizard', content: 'x' }] }));
    equal(e.status, 400, 'bad role status');
  }],
  ['unknown model is 404 model_not_found', async () => {
    const e = await api_error(client.completions.create({ model: 'no-such-model', prompt: 'hi', max_tokens: 2 }));
    equal(e.status, 404, 'status');
    equal(e.code, 'model_not_found', 'code');
  }],
  ['a prompt longer than the context is 400', async () => {
    const models = await client.models.list();
    const len = models.data[0].max_model_len;
    const e = await api_error(client.completions.create({ model, prompt: new Array(len + 5).fill(100), max_tokens: 1 }));
    equal(e.status, 400, 'status');
    equal(e.code, 'context_length_exceeded', 'code');
    const f = await api_error(client.completions.create({ model, prompt: new Array(len - 2).fill(100), max_tokens: 10 }));
    equal(f.status, 400, 'prompt + max_tokens over the context: status');
    equal(f.error && f.error.param, 'max_tokens', 'param');
  }],
  ['max_tokens <= 0 is 400', async () => {
    for (const v of [0, -3]) {
      const e = await api_error(client.completions.create({ model, prompt: 'hi', max_tokens: v }));
      equal(e.status, 400, `max_tokens ${v}`);
    }
    const e = await api_error(client.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }], max_completion_tokens: 0 }));
    equal(e.status, 400, 'max_completion_tokens 0');
  }],
  ['n too large is 400', async () => {
    const e = await api_error(client.completions.create({ model, prompt: 'hi', max_tokens: 1, n: 1000 }));
    equal(e.status, 400, 'status');
    equal(e.error && e.error.param, 'n', 'param');
  }],
  ['token ids outside the vocabulary are 400', async () => {
    const e = await api_error(client.completions.create({ model, prompt: [1, 2, 1 << 30], max_tokens: 1 }));
    equal(e.status, 400, 'status');
  }],
  ['a body over the limit is 413', async () => {
    const big = JSON.stringify({ model, prompt: 'x'.repeat(200000), max_tokens: 1 });
    const r = await post('/v1/completions', big);
    equal(r.status, 413, 'status');
    is_error_object(r.body, '413');
  }],
  ['missing or wrong API key is 401; health and metrics stay open', async () => {
    const none = await post('/v1/completions', ok_body, { 'content-type': 'application/json' });
    equal(none.status, 401, 'missing key');
    equal(is_error_object(none.body, 'missing key').code, 'invalid_api_key', 'code');
    const wrong = new OpenAI({ apiKey: 'wrong', baseURL: `${base}/v1`, maxRetries: 0 });
    const e = await api_error(wrong.models.list());
    equal(e.status, 401, 'wrong key');
    equal((await request(base, 'GET', '/health')).status, 200, 'health without key');
    equal((await request(base, 'GET', '/metrics')).status, 200, 'metrics without key');
  }],
  ['unknown paths are 404, wrong methods 405', async () => {
    const r = await request(base, 'GET', '/v1/engines', { headers: auth });
    equal(r.status, 404, 'unknown path');
    is_error_object(r.body, '404');
    const m = await request(base, 'GET', '/v1/chat/completions', { headers: auth });
    equal(m.status, 405, 'GET on a POST endpoint');
    equal(m.headers.allow, 'POST', 'Allow header');
    equal((await request(base, 'DELETE', '/v1/models', { headers: auth })).status, 405, 'DELETE /v1/models');
  }],
  ['malformed HTTP is 400 and closes only that connection', async () => {
    const reply = await raw_exchange(base, 'THIS IS NOT HTTP\r\n\r\n');
    check(reply.startsWith('HTTP/1.1 400'), `raw garbage: ${JSON.stringify(reply.slice(0, 40))}`);
    const bad_len = await raw_exchange(base, 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n');
    check(bad_len.startsWith('HTTP/1.1 400'), `bad Content-Length: ${JSON.stringify(bad_len.slice(0, 40))}`);
  }],
  ['a client that sends half a request and leaves does not hurt the server', async () => {
    await raw_exchange(base, 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"pro', 300);
  }],
  ['the server still serves after all of that', async () => {
    const r = await post('/v1/completions', ok_body);
    equal(r.status, 200, 'status');
    equal(JSON.parse(r.body).usage.completion_tokens > 0, true, 'generated');
  }],
]);
