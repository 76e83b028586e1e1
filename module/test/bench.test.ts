// A benchmark of the views' own work, not a test of speed: it prints figures and asserts only
// what the views return. `run_event_view` is a procedural view (see docs/spacetimedb.md, "What
// the views cost"): SpacetimeDB re-runs it for a viewer when a row it read changes, and each run
// costs one index lookup per granted (org, stream) plus one row visit per visible event. Here the
// same `visibleRows` runs over in-memory indexes shaped like the module's btree indexes, for
// events × subscribers × streams, and reports the cost of one re-run and of one append's
// re-runs (every subscriber of the appended stream).

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { grantRows, orgStreamKey, visibleRows, type GrantRowLike } from '../src/grants.js';

interface Row {
  id: number;
  org_id: string;
  stream_id: string;
}

function world(events: number, subscribers: number, streams: number, perSubscriber: number) {
  const byStream = new Map<string, Row[]>();
  for (let i = 0; i < events; i++) {
    const stream = `run:s${i % streams}`;
    const key = orgStreamKey('org_a', stream);
    const list = byStream.get(key) ?? [];
    list.push({ id: i, org_id: 'org_a', stream_id: stream });
    byStream.set(key, list);
  }
  const grants: GrantRowLike[][] = [];
  for (let s = 0; s < subscribers; s++) {
    const granted = Array.from(
      { length: perSubscriber },
      (_, j) => `run:s${(s * perSubscriber + j) % streams}`,
    );
    grants.push(
      grantRows(
        granted.map((stream) => ({ stream, query_sets: ['run_events@1'], ops: ['subscribe'] })),
        'org_a',
        2_000_000_000,
      ),
    );
  }
  return { byStream, grants };
}

describe('view cost (figures, not assertions on time)', () => {
  const shapes: [number, number, number, number][] = [
    // events, subscribers, streams, streams per subscriber
    [10_000, 100, 100, 1],
    [100_000, 100, 100, 1],
    [100_000, 1_000, 1_000, 5],
    [100_000, 100, 10, 10],
  ];
  for (const [events, subscribers, streams, per] of shapes) {
    it(`${events} events x ${subscribers} subscribers x ${streams} streams (${per} per subscriber)`, () => {
      const { byStream, grants } = world(events, subscribers, streams, per);
      const none = () => [] as Row[];
      const lookup = (org: string, stream: string) => byStream.get(orgStreamKey(org, stream)) ?? [];
      let shown = 0;
      const start = process.hrtime.bigint();
      for (const rows of grants) shown += visibleRows('run_event_view', rows, lookup, none).length;
      const micros = Number(process.hrtime.bigint() - start) / 1000;
      const perRun = micros / subscribers;
      // Every subscriber sees exactly its streams' events.
      assert.equal(shown, subscribers * per * (events / streams));
      // One append to a stream re-runs the view of each of its subscribers.
      const subscribersPerStream = (subscribers * per) / streams;
      console.log(
        `  view: ${events} events, ${subscribers} subscribers, ${streams} streams, ${per}/subscriber: ` +
          `${perRun.toFixed(1)} us per re-run (${(events / streams) * per} rows), ` +
          `~${(perRun * subscribersPerStream).toFixed(0)} us of re-runs per append ` +
          `(${subscribersPerStream} subscribers of the stream)`,
      );
    });
  }
});
