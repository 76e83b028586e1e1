// The SpacetimeDB module runtime provides a global `console` (its log goes to
// `spacetime logs`). The module is checked without DOM or Node.js typings, so declare just
// what it uses.
declare const console: {
  info(...data: unknown[]): void;
  warn(...data: unknown[]): void;
  error(...data: unknown[]): void;
};
