// A strict JSON reader that keeps what `JSON.parse` loses: whether a number was written as an
// integer (`1800000000`) or as a float (`1800000000.0`, `1.8e9`).
//
// The control plane's checks (Python, `control.grants.validate_sync_claims`) read claims with
// Python's `json`, where `1800000000.0` is a float and so not a valid `exp`. `JSON.parse` turns
// both spellings into the same number, so a module using it would accept a token the control
// plane rejects. This reader gives integers as `number` and floats as `JsonFloat`, so the claim
// checks in `grants.ts` see exactly the types Python sees.
//
// Pure code: no import from `spacetimedb`, so node's test runner can load it directly.

/** A JSON number written with a fraction or an exponent (or NaN / Infinity, which Python's
 * `json` reads as floats too). Never equal to an integer claim. */
export class JsonFloat {
  constructor(readonly value: number) {}
}

export type JsonValue = null | boolean | number | string | JsonFloat | JsonValue[] | JsonObject;

export interface JsonObject {
  [key: string]: JsonValue;
}

export class JsonSyntaxError extends Error {
  constructor(
    message: string,
    readonly position: number,
  ) {
    super(`${message} at offset ${position}`);
    this.name = 'JsonSyntaxError';
  }
}

/** Nesting deeper than this is refused, so a hostile payload cannot exhaust the stack. */
export const MAX_JSON_DEPTH = 128;

export function isJsonObject(value: JsonValue | undefined): value is JsonObject {
  return (
    typeof value === 'object' &&
    value !== null &&
    !Array.isArray(value) &&
    !(value instanceof JsonFloat)
  );
}

export function hasKey(object: JsonObject, key: string): boolean {
  return Object.prototype.hasOwnProperty.call(object, key);
}

const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?/y;
const ESCAPES: Readonly<Record<string, string>> = {
  '"': '"',
  '\\': '\\',
  '/': '/',
  b: '\b',
  f: '\f',
  n: '\n',
  r: '\r',
  t: '\t',
};

/** Parse `text` as one JSON value, surrounded only by JSON whitespace. */
export function parseJson(text: string): JsonValue {
  let pos = 0;

  const fail = (message: string): never => {
    throw new JsonSyntaxError(message, pos);
  };

  const skipWhitespace = (): void => {
    while (pos < text.length) {
      const c = text.charCodeAt(pos);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) pos++;
      else break;
    }
  };

  const literal = (word: string): boolean => {
    if (text.startsWith(word, pos)) {
      pos += word.length;
      return true;
    }
    return false;
  };

  const readString = (): string => {
    // The caller has checked the opening quote.
    pos++;
    let out = '';
    let chunkStart = pos;
    for (;;) {
      if (pos >= text.length) fail('unterminated string');
      const c = text.charCodeAt(pos);
      if (c === 0x22) {
        out += text.slice(chunkStart, pos);
        pos++;
        return out;
      }
      if (c < 0x20) fail('control character in string');
      if (c !== 0x5c) {
        pos++;
        continue;
      }
      out += text.slice(chunkStart, pos);
      const escape = text[pos + 1];
      if (escape === undefined) fail('unterminated escape');
      if (escape === 'u') {
        const hex = text.slice(pos + 2, pos + 6);
        if (!/^[0-9a-fA-F]{4}$/.test(hex)) fail('bad \\u escape');
        out += String.fromCharCode(parseInt(hex, 16));
        pos += 6;
      } else {
        const decoded = ESCAPES[escape as string];
        if (decoded === undefined) fail('bad escape');
        out += decoded;
        pos += 2;
      }
      chunkStart = pos;
    }
  };

  const readValue = (depth: number): JsonValue => {
    if (depth > MAX_JSON_DEPTH) fail('nested too deeply');
    skipWhitespace();
    if (pos >= text.length) fail('unexpected end of input');
    const c = text[pos];
    if (c === '{') {
      pos++;
      const object: JsonObject = {};
      skipWhitespace();
      if (text[pos] === '}') {
        pos++;
        return object;
      }
      for (;;) {
        skipWhitespace();
        if (text[pos] !== '"') fail('expected a string key');
        const key = readString();
        skipWhitespace();
        if (text[pos] !== ':') fail("expected ':'");
        pos++;
        const value = readValue(depth + 1);
        // defineProperty, not assignment: a key named `__proto__` stays an ordinary key.
        // A repeated key keeps its last value, as in Python's `json` and `JSON.parse`.
        Object.defineProperty(object, key, {
          value,
          enumerable: true,
          writable: true,
          configurable: true,
        });
        skipWhitespace();
        if (text[pos] === ',') {
          pos++;
          continue;
        }
        if (text[pos] === '}') {
          pos++;
          return object;
        }
        fail("expected ',' or '}'");
      }
    }
    if (c === '[') {
      pos++;
      const array: JsonValue[] = [];
      skipWhitespace();
      if (text[pos] === ']') {
        pos++;
        return array;
      }
      for (;;) {
        array.push(readValue(depth + 1));
        skipWhitespace();
        if (text[pos] === ',') {
          pos++;
          continue;
        }
        if (text[pos] === ']') {
          pos++;
          return array;
        }
        fail("expected ',' or ']'");
      }
    }
    if (c === '"') return readString();
    if (literal('true')) return true;
    if (literal('false')) return false;
    if (literal('null')) return null;
    // Python's `json` reads these non-standard spellings as floats; so do we.
    if (literal('NaN')) return new JsonFloat(NaN);
    if (literal('Infinity')) return new JsonFloat(Infinity);
    if (literal('-Infinity')) return new JsonFloat(-Infinity);
    NUMBER.lastIndex = pos;
    const match = NUMBER.exec(text);
    if (match === null) return fail('unexpected character');
    pos += match[0].length;
    const value = Number(match[0]);
    const isFloat = match[1] !== undefined || match[2] !== undefined;
    // A huge integer literal becomes ±Infinity here; it is still an integer claim (Python keeps
    // it exact), and it compares with any real timestamp the same way.
    return isFloat ? new JsonFloat(value) : value;
  };

  const value = readValue(0);
  skipWhitespace();
  if (pos !== text.length) fail('trailing characters');
  return value;
}
