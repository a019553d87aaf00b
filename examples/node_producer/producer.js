// A redwork producer in Node.js, written from docs/protocol.md alone: it stores jobs
// for Python workers and waits for their outcomes. See README.md.
//
//   node producer.js --queue node-demo --task square --count 5 \
//     --job '{"task": "greet", "args": ["Ada"], "kwargs": {"greeting": "Hi"}}'
//
// Exit status: 0 when every job completed, 1 when some job failed or was cancelled
// (its reason is printed), 2 when the jobs could not be enqueued or waited for.

import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { createClient } from 'redis';

const HERE = dirname(fileURLToPath(import.meta.url));
const PROTOCOL_VERSION = 1;
// Queue names and job ids go into key names unescaped: the protocol closes the set.
const NAME = /^[A-Za-z0-9_.:-]{1,128}$/;
const NAME_RULE = 'use 1 to 128 of A-Z a-z 0-9 _ . : -';
const DAY_MS = 86_400_000;
// Jobs per enqueue call, as redwork's own producer: one call never holds the server long.
const CHUNK = 1000;
// The return codes of every script (includes/common.lua).
const OK = 0;
const DUPLICATE = 3;
// The optional fields of the job document a --job may give, with their defaults: a
// field that holds its default is left out, as the protocol asks of producers.
const DEFAULTS = {
  args: [], kwargs: {}, priority: 0, max_attempts: 1, backoff: 1.0, backoff_max: 300,
  jitter: 0.5, timeout: null, meta: {},
};
const FINAL_STATES = new Set(['completed', 'failed', 'cancelled', 'skipped']);

function options() {
  const { values } = parseArgs({
    options: {
      queue: { type: 'string', default: 'default' },
      task: { type: 'string' },
      count: { type: 'string', default: '0' },
      job: { type: 'string', multiple: true, default: [] },
      scripts: { type: 'string' },
      timeout: { type: 'string', default: '60' },
    },
  });
  if (!NAME.test(values.queue)) {
    throw new Error(`queue name ${JSON.stringify(values.queue)}: ${NAME_RULE}`);
  }
  const count = Number(values.count);
  if (!Number.isInteger(count) || count < 0) throw new Error('--count takes a whole number');
  if (count > 0 && values.task === undefined) throw new Error('--count needs --task');
  const specs = [];
  for (let n = 1; n <= count; n++) specs.push({ task: values.task, args: [n] });
  for (const text of values.job) specs.push(jobSpec(text));
  if (specs.length === 0) throw new Error('no jobs: give --task NAME --count N, or --job JSON');
  const timeout = Number(values.timeout);
  if (!(timeout > 0)) throw new Error('--timeout takes a number of seconds');
  return {
    // The fallback only where no server is given: redwork's own (an embedded server)
    // is Python's to start.
    client: clientOptions(process.env.REDWORK_REDIS_URL || 'redis://127.0.0.1:6379/0'),
    queue: values.queue,
    scriptsDir: values.scripts ?? process.env.REDWORK_SCRIPTS_DIR
      ?? resolve(HERE, '../../src/redwork/scripts'),
    specs,
    timeoutMs: timeout * 1000,
    maxPayload: Number(process.env.REDWORK_MAX_PAYLOAD || 524_288),
  };
}

function jobSpec(text) {
  let spec;
  try {
    spec = JSON.parse(text);
  } catch (error) {
    throw new Error(`--job ${text}: not JSON (${error.message})`);
  }
  const refuse = (why) => { throw new Error(`--job ${text}: ${why}`); };
  if (typeof spec?.task !== 'string') refuse('needs a "task" string');
  const known = (field) => Object.hasOwn(DEFAULTS, field) || field === 'task' || field === 'id';
  const unknown = Object.keys(spec).filter((field) => !known(field));
  if (unknown.length > 0) refuse(`unknown fields ${unknown.join(', ')}`);
  if (spec.id !== undefined && !(typeof spec.id === 'string' && NAME.test(spec.id))) {
    refuse(`id ${JSON.stringify(spec.id)}: ${NAME_RULE}`);
  }
  if (spec.args !== undefined && !Array.isArray(spec.args)) refuse('args must be an array');
  const { kwargs = {} } = spec;
  if (typeof kwargs !== 'object' || kwargs === null || Array.isArray(kwargs)) {
    refuse('kwargs must be an object');
  }
  const priority = spec.priority ?? 0;
  if (!(Number.isInteger(priority) && priority >= 0 && priority <= 9)) {
    refuse('priority is a whole number from 0 to 9');
  }
  return spec;
}

// The script `name`.lua with every `-- @include x` line replaced by includes/x.lua,
// again and again (an include may include others), as redwork's loader does; the result
// is byte for byte redwork's script, so both share one entry in the server's cache.
function loadScript(dir, name) {
  const include = /^-- @include (\w+)$/m;
  const read = (path) => readFileSync(join(dir, path), 'utf8');
  let source = read(`${name}.lua`);
  while (include.test(source)) {
    const all = new RegExp(include.source, 'gm');
    source = source.replace(all, (_, file) => read(`includes/${file}.lua`));
  }
  return { source, sha: createHash('sha1').update(source).digest('hex') };
}

// EVALSHA, and EVAL when the server does not have the script (NOSCRIPT): after a
// restart or a SCRIPT FLUSH, or on first use.
async function callScript(client, script, keys, args) {
  const tail = [String(keys.length), ...keys, ...args.map(String)];
  try {
    return await client.sendCommand(['EVALSHA', script.sha, ...tail]);
  } catch (error) {
    if (!String(error?.message).startsWith('NOSCRIPT')) throw error;
    return client.sendCommand(['EVAL', script.source, ...tail]);
  }
}

function document(spec, id, queue, maxPayload) {
  const doc = { v: PROTOCOL_VERSION, id, task: spec.task, queue };
  for (const [field, fallback] of Object.entries(DEFAULTS)) {
    const value = spec[field];
    const given = value !== undefined && JSON.stringify(value) !== JSON.stringify(fallback);
    if (given) doc[field] = value;
  }
  const data = JSON.stringify(doc);
  if (Buffer.byteLength(data) > maxPayload) {
    throw new Error(`job ${id} (${spec.task}) is over the job document limit, ${maxPayload} bytes`);
  }
  return data;
}

// Store the jobs with the enqueue script; returns one { id, spec } per job.
async function enqueue(client, opts) {
  const prefix = `rw:{${opts.queue}}:`;
  const keys = ['wait', 'marker', 'events', 'stats', 'delayed', 'schedules'].map((k) => prefix + k);
  const script = loadScript(opts.scriptsDir, 'enqueue');
  const jobs = opts.specs.map((spec) => ({ id: spec.id ?? randomBytes(12).toString('hex'), spec }));
  const rows = jobs.map(({ id, spec }) => [
    id, document(spec, id, opts.queue, opts.maxPayload),
    '', // key (per-key ordering)
    '', // idempotency key
    spec.priority ?? 0,
    '', // priority of retries: the job's own
    '', // delay ms
    '', // uniqueness key
    '', // uniqueness policy
  ]);
  // Producers register their queue, so that tools (`redwork info`, the dashboard) list it.
  await client.sAdd('rw:queues', opts.queue);
  for (let start = 0; start < rows.length; start += CHUNK) {
    const chunk = rows.slice(start, start + CHUNK);
    // prefix, queue, idempotency window ms, TTL s of a job replaced under its uniqueness
    // key, schedule name, tick: redwork's defaults, and no schedule.
    const args = [prefix, opts.queue, DAY_MS, DAY_MS / 1000, '', '', ...chunk.flat()];
    const replies = await callScript(client, script, keys, args);
    replies.forEach((reply, i) => {
      const { id, spec } = jobs[start + i];
      if (reply === DUPLICATE) {
        console.error(`${id}: a job with this id exists already: not enqueued again`);
      } else if (reply !== OK) {
        // A string would name the job holding an idempotency or uniqueness key, which
        // these jobs do not use.
        throw new Error(`enqueue of ${id} (${spec.task}) replied ${JSON.stringify(reply)}`);
      }
    });
  }
  console.error(`enqueued ${jobs.length} job(s) on queue ${opts.queue}`);
  return jobs;
}

function describeCall(spec) {
  const args = (spec.args ?? []).map((value) => JSON.stringify(value));
  const kwargs = Object.entries(spec.kwargs ?? {}).map(([k, v]) => `${k}=${JSON.stringify(v)}`);
  return `${spec.task}(${[...args, ...kwargs].join(', ')})`;
}

// One line per ended job; returns whether it completed.
function report(job, [state, result, reason, error, attempt]) {
  const head = `${job.id} ${describeCall(job.spec)} ->`;
  if (state === 'completed') {
    console.log(`${head} completed: ${result}`);
    return true;
  }
  if (state === 'failed') {
    // The error holds a Python traceback: its last line is the exception.
    const last = (error ?? '').trim().split('\n').pop();
    const attempts = Number(attempt ?? 0);
    const tries = `${attempts} attempt${attempts === 1 ? '' : 's'}`;
    console.log(`${head} failed (${reason}) after ${tries}: ${last}`);
    return false;
  }
  console.log(`${head} ${state}`);
  return false;
}

// Wait for every job to end, the documented way: subscribe to each job's channel,
// then read its hash (so an end published before the subscription took effect is seen
// there), and read it again when its channel announces the end. Never polls.
async function waitForAll(client, opts, jobs) {
  const prefix = `rw:{${opts.queue}}:`;
  const pending = new Map(jobs.map((job) => [`${prefix}job:${job.id}`, job]));
  const toRead = new Set(pending.keys());
  let allCompleted = true;
  let wake = () => {};
  let timer;
  const timedOut = new Promise((done) => { timer = setTimeout(done, opts.timeoutMs, 'timeout'); });
  // A subscription lost for good could miss an end: stop waiting rather than wait in vain.
  let lost;
  const broken = new Promise((_, fail) => { lost = fail; });
  broken.catch(() => {}); // awaited only while jobs are pending
  const subscriber = client.duplicate();
  subscriber.on('error', () => {}); // one per failed reconnect; 'terminated' ends them
  subscriber.on('terminated', (cause) => {
    lost(new Error(`lost the subscription: ${cause.message}`));
  });
  await subscriber.connect();
  // Reconnected (and resubscribed): ends announced in between were missed, read them all.
  subscriber.on('ready', () => {
    for (const key of pending.keys()) toRead.add(key);
    wake();
  });
  try {
    // The channel of a job carries its final state; its hash has the rest.
    await subscriber.subscribe([...pending.keys()], (_state, channel) => {
      toRead.add(channel);
      wake();
    });
    while (pending.size > 0) {
      // Made before reading: an end announced during the reads wakes the next wait.
      const woken = new Promise((done) => { wake = done; });
      const keys = [...toRead].filter((key) => pending.has(key));
      toRead.clear();
      const replies = await Promise.all(
        keys.map((key) => client.hmGet(key, ['state', 'result', 'reason', 'error', 'attempt'])),
      );
      keys.forEach((key, i) => {
        const state = replies[i][0];
        if (state === null) throw new Error(`job ${pending.get(key).id} has no hash (expired?)`);
        if (FINAL_STATES.has(state)) {
          allCompleted = report(pending.get(key), replies[i]) && allCompleted;
          pending.delete(key);
        }
      });
      if (pending.size > 0 && (await Promise.race([woken, timedOut, broken])) === 'timeout') {
        const ids = [...pending.values()].map((job) => job.id).join(', ');
        const waited = opts.timeoutMs / 1000;
        throw new Error(`no outcome within ${waited}s for ${pending.size} job(s): ${ids}`);
      }
    }
  } finally {
    clearTimeout(timer);
    subscriber.destroy();
  }
  return allCompleted;
}

// redis:// and rediss:// as node-redis takes them; unix:///path?db=N, the form
// redwork's embedded server reports, as a socket path. A connection that does not come
// back within a few tries ends the run (status 2): node-redis would retry without end.
function clientOptions(url) {
  let parsed;
  try {
    parsed = new URL(url);
  } catch {
    throw new Error(`REDWORK_REDIS_URL ${url} is not a URL`);
  }
  const reconnectStrategy = (retries) => (retries < 5 ? 100 * 2 ** retries : false);
  if (parsed.protocol === 'redis:' || parsed.protocol === 'rediss:') {
    return { url, socket: { reconnectStrategy } };
  }
  if (parsed.protocol === 'unix:') {
    const path = decodeURIComponent(parsed.pathname);
    const database = Number(parsed.searchParams.get('db') ?? 0);
    return { socket: { path, reconnectStrategy }, database };
  }
  throw new Error(`REDWORK_REDIS_URL ${url}: use a redis://, rediss:// or unix:// URL`);
}

async function main() {
  let opts;
  try {
    opts = options();
  } catch (error) {
    console.error(`producer.js: ${error.message}`);
    return 2;
  }
  const client = createClient(opts.client);
  let failure = null;
  client.on('error', (error) => { failure ??= error; });
  try {
    await client.connect();
    const jobs = await enqueue(client, opts);
    return (await waitForAll(client, opts, jobs)) ? 0 : 1;
  } catch (error) {
    const cause = failure && failure.message !== error.message ? ` (${failure.message})` : '';
    console.error(`producer.js: ${error.message}${cause}`);
    return 2;
  } finally {
    if (client.isOpen) await client.close();
  }
}

process.exitCode = await main();
