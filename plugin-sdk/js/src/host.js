// What the broker offers a plugin, and nothing else: log, time, configuration.
//
// Inside the broker these call the host imports of the WIT world
// (`stellwerk:plugin/host@1.0.0`); under Node.js (`node --test`) they fall back to
// stderr, the system clock and a configuration that `stellwerk-plugin-sdk/testing` sets.

/** @type {{ log(level: string, message: string): void, nowMs(): number, configJson(): string }} */
let impl = nativeHost();

/** Used by the component entry that `stellwerk-plugin build` generates; not part of the API. */
export function __setHost(witHost) {
  impl = witHost;
}

/** @returns {typeof impl} the native stand-in (for `testing`). */
export function __host() {
  return impl;
}

export const Level = Object.freeze({
  Trace: 'trace',
  Debug: 'debug',
  Info: 'info',
  Warn: 'warn',
  Error: 'error',
});

const LEVELS = new Set(Object.values(Level));

/** Writes one log line, recorded by the broker under the plugin's name. */
export function log(level, message) {
  if (!LEVELS.has(level)) {
    throw new TypeError(`log level must be one of ${[...LEVELS].join(', ')}; got ${String(level)}`);
  }
  impl.log(level, String(message));
}

export const debug = (message) => log(Level.Debug, message);
export const info = (message) => log(Level.Info, message);
export const warn = (message) => log(Level.Warn, message);
export const error = (message) => log(Level.Error, message);

/** Wall-clock time in milliseconds since the Unix epoch, as a number. */
export function nowMs() {
  return Number(impl.nowMs());
}

/** The plugin's configuration from its sidecar `<name>.toml`, as JSON text (`"{}"` if none). */
export function configJson() {
  return impl.configJson();
}

/**
 * The plugin's configuration, parsed; an empty object if there is none. Parses on every
 * call: a hot hook that needs it should keep what it read (a reloaded configuration comes
 * with a fresh instance).
 */
export function config() {
  try {
    return JSON.parse(configJson());
  } catch (e) {
    error(`the plugin configuration is not valid JSON: ${e.message}`);
    return {};
  }
}

/** Native stand-ins (Node.js): stderr, the system clock, a settable configuration. */
function nativeHost() {
  const state = { logs: [], nowMs: null, configJson: '{}' };
  return {
    state,
    log(level, message) {
      state.logs.push([level, message]);
      if (typeof process !== 'undefined' && process.env.STELLWERK_PLUGIN_QUIET_LOGS !== '1') {
        process.stderr.write(`[plugin ${level}] ${message}\n`);
      }
    },
    nowMs() {
      return state.nowMs ?? Date.now();
    },
    configJson() {
      return state.configJson;
    },
  };
}
