// Entry of the IIFE bundle `dist/stellwerk-jsupdater.js`: the global class `Stellwerk` and
// `StellwerkJSUpdater.install(options)`.
import { Stellwerk } from './client.js';
import { installJSUpdaterBridge } from './jsupdater.js';

const g = globalThis as unknown as Record<string, unknown>;
g.Stellwerk ??= Stellwerk;
g.StellwerkJSUpdater = { install: installJSUpdaterBridge };
