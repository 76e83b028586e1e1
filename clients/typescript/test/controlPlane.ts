// A real control plane for the tests: `control serve` (from the repository's virtualenv, or
// CONTROL_BIN) on a free loopback port with a temporary SQLite database, which a test can hang
// (SIGSTOP: connections are accepted, never answered), stop, and start again on the same port
// and database.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

// Fixed development key material, as the Python test harness uses (harness/keys.py).
const KEK = Buffer.alloc(32, 'k').toString('base64url');
const PEPPER = Buffer.alloc(32, 'p').toString('base64url');

export function controlBin(): string {
  const fromEnv = process.env.CONTROL_BIN;
  // dist/test/ -> the repository root, four levels up.
  const repoVenv = fileURLToPath(new URL('../../../../.venv/bin/control', import.meta.url));
  const bin = fromEnv ?? repoVenv;
  if (!existsSync(bin)) {
    throw new Error(
      `no control plane to test against: ${bin} does not exist. Run \`make install\` at the ` +
        'repository root, or set CONTROL_BIN to a `control` executable.',
    );
  }
  return bin;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export class ControlPlane {
  readonly bin = controlBin();
  readonly dir = mkdtempSync(join(tmpdir(), 'control-client-test-'));
  readonly port: number;
  readonly baseUrl: string;
  readonly env: NodeJS.ProcessEnv;
  #process: ChildProcess | undefined;
  #hung = false;
  #starts = 0;

  private constructor(port: number, settings: Record<string, string>) {
    this.port = port;
    this.baseUrl = `http://127.0.0.1:${port}`;
    const inherited = Object.fromEntries(
      Object.entries(process.env).filter(([name]) => !name.startsWith('CONTROL_')),
    );
    this.env = {
      ...inherited,
      CONTROL_DATABASE_URL: `sqlite:///${join(this.dir, 'control.db')}`,
      CONTROL_ISSUER: this.baseUrl,
      CONTROL_KEY_ENCRYPTION_KEY: KEK,
      CONTROL_CREDENTIAL_PEPPER: PEPPER,
      CONTROL_DEV_SECRETS_FILE: join(this.dir, 'secrets.json'),
      CONTROL_MINT_RATE_PER_SECOND: '0',
      CONTROL_KEY_REFRESH_SECONDS: '0.5',
      CONTROL_KEY_PUBLISH_LEAD_SECONDS: '0',
      CONTROL_TOKEN_TTL_MIN_SECONDS: '2',
      ...Object.fromEntries(
        Object.entries(settings).map(([name, value]) => [`CONTROL_${name.toUpperCase()}`, value]),
      ),
    };
  }

  static async start(settings: Record<string, string> = {}): Promise<ControlPlane> {
    const plane = new ControlPlane(await freePort(), settings);
    await plane.up();
    return plane;
  }

  async up(): Promise<void> {
    this.#starts += 1;
    const log = openSync(join(this.dir, `server-${this.#starts}.log`), 'w');
    const child = spawn(this.bin, ['serve', '--port', String(this.port)], {
      env: this.env,
      cwd: this.dir,
      stdio: ['ignore', log, log],
    });
    this.#process = child;
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        const response = await fetch(`${this.baseUrl}/readyz`, {
          signal: AbortSignal.timeout(2_000),
        });
        await response.body?.cancel();
        if (response.status === 200) return;
      } catch {
        // not listening yet
      }
      if (child.exitCode !== null || Date.now() > deadline) {
        throw new Error(`control serve did not start:\n${this.log()}`);
      }
      await sleep(100);
    }
  }

  log(): string {
    return readFileSync(join(this.dir, `server-${this.#starts}.log`), 'utf8');
  }

  hang(): void {
    this.#signal('SIGSTOP');
    this.#hung = true;
  }

  resume(): void {
    this.#signal('SIGCONT');
    this.#hung = false;
  }

  async down(): Promise<void> {
    const child = this.#process;
    if (child === undefined) return;
    if (this.#hung) this.resume();
    const exited = new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve();
      else child.once('exit', () => resolve());
    });
    child.kill('SIGTERM');
    const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(killer);
    this.#process = undefined;
  }

  async ensureUp(): Promise<void> {
    if (this.#hung) this.resume();
    if (this.#process === undefined) await this.up();
  }

  async close(): Promise<void> {
    await this.down();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** The `control` command line against this plane's database; its JSON output. */
  control(...args: string[]): Record<string, string> {
    const result = spawnSync(this.bin, args, { env: this.env, cwd: this.dir, encoding: 'utf8' });
    if (result.status !== 0) {
      throw new Error(`control ${args.join(' ')} failed: ${result.stderr}`);
    }
    return JSON.parse(result.stdout) as Record<string, string>;
  }

  /** One authenticated call of the HTTP API; the parsed body, after checking the status. */
  async api(
    key: string,
    method: string,
    path: string,
    body?: unknown,
    expected?: number,
  ): Promise<any> {
    const response = await fetch(`${this.baseUrl}${path}`, {
      method,
      headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await response.text();
    const want = expected ?? (method === 'POST' ? 201 : 200);
    if (response.status !== want) {
      throw new Error(`${method} ${path}: ${response.status} ${text}`);
    }
    return text === '' ? undefined : JSON.parse(text);
  }

  #signal(signal: NodeJS.Signals): void {
    const pid = this.#process?.pid;
    if (pid === undefined) throw new Error('the control plane is not running');
    process.kill(pid, signal);
  }
}

/** An org as its admin sets it up: a query set, a stream, a rule letting members subscribe, and
 * a member with an API key. */
export async function orgWithMember(
  plane: ControlPlane,
  name: string,
  stream: string,
): Promise<{ orgId: string; adminKey: string; memberKey: string; memberId: string }> {
  const boot = plane.control('admin', 'bootstrap', '--org', name);
  const adminKey = boot.api_key ?? '';
  await plane.api(adminKey, 'POST', '/api/admin/query-sets', {
    name: 'run_events',
    stream_kinds: ['run'],
    queries: ['SELECT * FROM run_event_view'],
  });
  await plane.api(adminKey, 'POST', '/api/streams', { id: stream });
  await plane.api(adminKey, 'POST', '/api/admin/grant-rules', {
    effect: 'allow',
    subjects: { roles: ['member'] },
    streams: { kind: 'run', relation: 'org' },
    query_sets: ['run_events'],
    ops: ['subscribe'],
  });
  const member = await plane.api(adminKey, 'POST', '/api/admin/principals', {
    kind: 'user',
    name: 'alice',
  });
  const key = await plane.api(adminKey, 'POST', `/api/admin/principals/${member.id}/credentials`, {});
  return { orgId: boot.org_id ?? '', adminKey, memberKey: key.key, memberId: member.id };
}
