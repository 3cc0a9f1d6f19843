// Entry of the IIFE bundle `dist/stellwerk.js`: the global class `Stellwerk`.
import { Stellwerk } from './client.js';
import { StellwerkError } from './types.js';

(globalThis as unknown as { Stellwerk: typeof Stellwerk }).Stellwerk = Stellwerk;
(Stellwerk as unknown as { Error: typeof StellwerkError }).Error = StellwerkError;
