// End-to-end checks of a running `xyserve serve` through the official `openai` npm client:
// completions and chat, streaming and not, n > 1, stop strings, seeds, logprobs, echo, token
// prompts, and usage counts against /tokenize.
//   node tools/server_tests/api_test.mjs --base-url http://127.0.0.1:PORT [--model NAME]
import OpenAI from 'openai';
import { parse_args, check, equal, run_cases, request } from './common.mjs';

const args = parse_args(process.argv);
const base = args['base-url'];
const client = new OpenAI({ apiKey: args['api-key'] || 'unused', baseURL: `${base}/v1`, maxRetries: 0, timeout: 60000 });
let model = args.model;

async function tokenize(body) {
  const r = await request(base, 'POST', '/tokenize', { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
  equal(r.status, 200, '/tokenize status');
  return JSON.parse(r.body);
}

async function stream_text(params, create) {
  const chunks = [];
  for await (const chunk of await create({ ...params, stream: true })) chunks.push(chunk);
  return chunks;
}

const greedy = { temperature: 0, max_tokens: 12, ignore_eos: true };
const messages = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'Name three colours.' },
];

await run_cases([
  ['models lists the served model', async () => {
    const list = await client.models.list();
    check(list.data.length >= 1, 'at least one model');
    if (!model) model = list.data[0].id;
    check(list.data.some((m) => m.id === model), `model ${model} listed`);
    equal(list.data[0].object, 'model', 'object');
  }],
  ['health answers 200', async () => {
    equal((await request(base, 'GET', '/health')).status, 200, 'status');
  }],
  ['completion usage equals token counts', async () => {
    const prompt = 'The quick brown fox jumps over the lazy dog';
    const r = await client.completions.create({ model, prompt, ...greedy, logprobs: 0 });
    const tok = await tokenize({ prompt });
    equal(r.usage.prompt_tokens, tok.count, 'prompt_tokens = /tokenize count');
    equal(r.usage.completion_tokens, 12, 'completion_tokens = max_tokens with ignore_eos');
    equal(r.choices[0].logprobs.tokens.length, r.usage.completion_tokens, 'one logprob per token');
    equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens, 'total');
    equal(r.choices[0].finish_reason, 'length', 'finish_reason');
    equal(r.object, 'text_completion', 'object');
    check(r.id.startsWith('cmpl-'), 'id prefix');
  }],
  ['streamed completion equals non-streamed (greedy)', async () => {
    const params = { model, prompt: 'Once upon a time', ...greedy };
    const whole = await client.completions.create(params);
    const chunks = await stream_text({ ...params, stream_options: { include_usage: true } },
      (p) => client.completions.create(p));
    const text = chunks.filter((c) => c.choices.length).map((c) => c.choices[0].text).join('');
    equal(text, whole.choices[0].text, 'text');
    const last_choice = chunks.filter((c) => c.choices.length).at(-1);
    equal(last_choice.choices[0].finish_reason, 'length', 'last chunk finish_reason');
    const usage = chunks.at(-1).usage;
    equal(usage && usage.completion_tokens, 12, 'usage chunk completion_tokens');
    equal(usage && usage.prompt_tokens, whole.usage.prompt_tokens, 'usage chunk prompt_tokens');
  }],
  ['token-id prompt equals its text prompt (greedy)', async () => {
    const prompt = 'Paris is the capital of';
    const ids = (await tokenize({ prompt })).tokens;
    const a = await client.completions.create({ model, prompt, ...greedy });
    const b = await client.completions.create({ model, prompt: ids, ...greedy });
    equal(b.choices[0].text, a.choices[0].text, 'text');
  }],
  ['several prompts with n each come back in prompt-major order', async () => {
    const r = await client.completions.create({ model, prompt: ['alpha', 'beta beta'], n: 2, max_tokens: 3, seed: 5 });
    equal(r.choices.map((c) => c.index), [0, 1, 2, 3], 'indices');
    const a = await client.completions.create({ model, prompt: 'beta beta', n: 2, max_tokens: 3, seed: 5 });
    equal([r.choices[2].text, r.choices[3].text], [a.choices[0].text, a.choices[1].text], 'second prompt choices');
  }],
  ['seeds reproduce, n > 1 choices differ', async () => {
    const params = { model, prompt: 'Random words:', max_tokens: 8, temperature: 1.0, seed: 1234, n: 3, ignore_eos: true };
    const a = await client.completions.create(params);
    const b = await client.completions.create(params);
    equal(a.choices.map((c) => c.text), b.choices.map((c) => c.text), 'same seed, same choices');
    equal(a.choices.length, 3, 'n choices');
    check(new Set(a.choices.map((c) => c.text)).size === 3, `choices differ: ${JSON.stringify(a.choices.map((c) => c.text))}`);
    const c = await client.completions.create({ ...params, seed: 1235, n: 1 });
    equal(c.choices[0].text, a.choices[1].text, 'choice j uses seed + j (vLLM)');
    const d = await client.completions.create({ ...params, seed: 99, n: 1 });
    check(d.choices[0].text !== a.choices[0].text, 'another seed, another text');
    equal(a.usage.completion_tokens, 24, 'usage sums the choices');
  }],
  ['stop strings cut the text before the match (stream and not)', async () => {
    const params = { model, prompt: 'Count: one two three', ...greedy, max_tokens: 16 };
    const full = (await client.completions.create(params)).choices[0].text;
    check(full.length >= 6, `enough text to pick a stop string from: ${JSON.stringify(full)}`);
    const start = Math.floor(full.length / 2);
    const stop = full.slice(start, start + 2);
    const expected = full.slice(0, full.indexOf(stop));
    const r = await client.completions.create({ ...params, stop: [stop, 'never-appears-xyz'] });
    equal(r.choices[0].text, expected, `text before stop ${JSON.stringify(stop)}`);
    equal(r.choices[0].finish_reason, 'stop', 'finish_reason');
    equal(r.choices[0].stop_reason, stop, "vLLM's stop_reason names the stop string");
    const chunks = await stream_text({ ...params, stop }, (p) => client.completions.create(p));
    equal(chunks.map((c) => c.choices.length ? c.choices[0].text : '').join(''), expected, 'streamed text');
  }],
  ['completion logprobs: top-k alternatives, greedy picks the best', async () => {
    const r = await client.completions.create({ model, prompt: 'Hello', ...greedy, max_tokens: 6, logprobs: 3 });
    const lp = r.choices[0].logprobs;
    equal(lp.tokens.length, 6, 'tokens');
    equal(lp.token_logprobs.length, 6, 'token_logprobs');
    equal(lp.text_offset.length, 6, 'text_offset');
    for (let i = 0; i < 6; ++i) {
      const alts = Object.values(lp.top_logprobs[i]);
      check(alts.length >= 1 && alts.length <= 3, `top_logprobs[${i}] has 1..3 entries`);
      check(lp.token_logprobs[i] <= 0, 'logprob <= 0');
      check(Math.abs(Math.max(...alts) - lp.token_logprobs[i]) < 1e-4, `greedy token ${i} is the top alternative`);
    }
  }],
  ['echo prepends the prompt', async () => {
    const prompt = 'Echo me';
    const r = await client.completions.create({ model, prompt, ...greedy, max_tokens: 3, echo: true });
    const plain = await client.completions.create({ model, prompt, ...greedy, max_tokens: 3 });
    equal(r.choices[0].text, prompt + plain.choices[0].text, 'text');
  }],
  ['chat: usage equals the templated prompt, stream equals non-stream', async () => {
    const params = { model, messages, ...greedy };
    const r = await client.chat.completions.create(params);
    equal(r.object, 'chat.completion', 'object');
    equal(r.choices[0].message.role, 'assistant', 'role');
    const tok = await tokenize({ messages });
    equal(r.usage.prompt_tokens, tok.count, 'prompt_tokens = /tokenize(messages) count');
    equal(r.usage.completion_tokens, 12, 'completion_tokens');
    const chunks = await stream_text({ ...params, stream_options: { include_usage: true } },
      (p) => client.chat.completions.create(p));
    equal(chunks[0].choices[0].delta.role, 'assistant', 'first delta has the role');
    const text = chunks.filter((c) => c.choices.length).map((c) => c.choices[0].delta.content || '').join('');
    equal(text, r.choices[0].message.content, 'streamed content');
    equal(chunks.at(-1).usage.completion_tokens, 12, 'usage chunk');
    check(chunks.every((c) => c.id === chunks[0].id), 'one id across chunks');
  }],
  ['chat n > 1 streams every choice to its finish', async () => {
    const chunks = await stream_text({ model, messages, n: 3, max_tokens: 5, seed: 7, ignore_eos: true },
      (p) => client.chat.completions.create(p));
    for (let i = 0; i < 3; ++i) {
      const mine = chunks.filter((c) => c.choices.length && c.choices[0].index === i);
      check(mine.length >= 2, `choice ${i} has chunks`);
      equal(mine.at(-1).choices[0].finish_reason, 'length', `choice ${i} finishes`);
    }
  }],
  ['chat logprobs with top_logprobs', async () => {
    const r = await client.chat.completions.create({ model, messages, ...greedy, max_tokens: 5, logprobs: true, top_logprobs: 2 });
    const content = r.choices[0].logprobs.content;
    equal(content.length, 5, 'one entry per token');
    for (const t of content) {
      equal(t.top_logprobs.length, 2, 'two alternatives');
      check(Math.abs(t.top_logprobs[0].logprob - t.logprob) < 1e-4, 'greedy token is the best alternative');
      check(Array.isArray(t.bytes), 'bytes');
    }
  }],
  ['max_completion_tokens limits chat output', async () => {
    const r = await client.chat.completions.create({ model, messages, max_completion_tokens: 4, ignore_eos: true });
    equal(r.usage.completion_tokens, 4, 'completion_tokens');
  }],
  ['detokenize inverts tokenize', async () => {
    const prompt = 'Grüße, 世界! 🙂';
    const ids = (await tokenize({ prompt, add_special_tokens: false })).tokens;
    const r = await request(base, 'POST', '/detokenize', { body: JSON.stringify({ tokens: ids }) });
    equal(JSON.parse(r.body).prompt, prompt, 'round trip');
  }],
]);
