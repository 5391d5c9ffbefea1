/* The entry of the script-tag build (chloed/static/chloe.js, served by
 * chloed at /chloe.js): the client as window.Chloe, as a plain script. */
import { Chloe } from './chloe.js';

(typeof window !== 'undefined' ? window : globalThis).Chloe = Chloe;
