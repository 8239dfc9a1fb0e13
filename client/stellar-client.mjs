// ES-module entry of the Stellar client: `import StellarClient from '/stellar-client.mjs'`
// in a browser, or from this file in Node. The client itself is stellar-client.js (a
// classic script): under Node it is CommonJS and arrives as this import's default export;
// in a browser it runs as a module with no exports and sets `globalThis.StellarClient`.
import * as loaded from './stellar-client.js';

const StellarClient = loaded.default || globalThis.StellarClient;
export default StellarClient;
export { StellarClient };
