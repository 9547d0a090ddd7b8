// The console is served by the daemon under /console/ (same origin as the AWS door).
// The build must not need anything at run time from another origin, and must not emit
// inline scripts or styles (the daemon's Content-Security-Policy forbids them).
import { defineConfig } from 'vite';

export default defineConfig({
  base: '/console/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
  },
});
