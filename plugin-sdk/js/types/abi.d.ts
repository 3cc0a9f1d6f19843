import type { ChannelPlugin } from './index.js';
import type { ChannelPluginExports } from './wit.js';

/** Why `plugin` cannot be a plugin, or null. */
export declare function problem(plugin: unknown): string | null;
/** The WIT exports of the world `stellwerk:plugin/channel-plugin@1.0.0` for `plugin`. */
export declare function exportsFor(plugin: ChannelPlugin): ChannelPluginExports;
