// One build step: bundles src/main.js (esbuild) and src/styles.css (Tailwind) into hashed, minified
// files under dist/assets, writes dist/index.html naming them, and stores gzip and brotli copies next
// to each file so the controller serves them compressed without compressing on every request.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { brotliCompressSync, constants, gzipSync } from 'node:zlib';
import * as esbuild from 'esbuild';

// spice-html5 is used with our patches (patches/, applied by `npm ci`'s postinstall): without them
// its SPICE console fails at run time, so the build stops here instead.
if (!readFileSync('node_modules/@spice-project/spice-html5/src/port.js', 'utf8').includes('arraybuffer_to_str }')) {
  throw new Error('spice-html5 is not patched: run `npm ci` (or `npx patch-package`) in frontend/');
}

const dist = 'dist';
const assets = join(dist, 'assets');
rmSync(dist, { recursive: true, force: true });
mkdirSync(assets, { recursive: true });

const js = await esbuild.build({
  entryPoints: ['src/main.js'],
  bundle: true,
  minify: true,
  format: 'esm',
  target: 'es2022',
  entryNames: 'app-[hash]',
  // Console code is imported when a console opens, into chunks of its own.
  splitting: true,
  chunkNames: 'chunk-[hash]',
  outdir: assets,
  metafile: true,
  legalComments: 'none',
});
const [entryPath, entry] = Object.entries(js.metafile.outputs).find(([, o]) => o.entryPoint === 'src/main.js');
const jsName = basename(entryPath);
// What every page loads: the entry and the chunks it imports statically (code it shares with a
// console); the other chunks come only when a console opens.
const loaded = new Set([jsName, ...entry.imports.filter((i) => i.kind === 'import-statement').map((i) => basename(i.path))]);

const tmpCss = join(dist, 'app.css');
execFileSync(join('node_modules', '.bin', 'tailwindcss'), ['-i', 'src/styles.css', '-o', tmpCss, '--minify'], {
  stdio: ['ignore', 'ignore', 'inherit'],
});
const css = readFileSync(tmpCss);
rmSync(tmpCss);
const cssName = 'app-' + createHash('sha256').update(css).digest('hex').slice(0, 8).toUpperCase() + '.css';
writeFileSync(join(assets, cssName), css);

const icon = readFileSync('src/favicon.svg');
const iconName = 'favicon-' + createHash('sha256').update(icon).digest('hex').slice(0, 8).toUpperCase() + '.svg';
writeFileSync(join(assets, iconName), icon);

// Each view's markup lives in src/views/; the page takes them in where it names them (and a view
// takes in its parts the same way).
const include = (text) =>
  text.replace(/^( *)<!-- include (views\/[a-z-]+\.html) -->$/gm, (_, indent, file) =>
    include(readFileSync(join('src', file), 'utf8').trimEnd()).replace(/^/gm, indent),
  );
const html = include(readFileSync('src/index.html', 'utf8'))
  .replace('@CSS@', cssName)
  .replace('@ICON@', iconName)
  .replace('@JS@', jsName);
if (html.includes('<!-- include')) throw new Error('an include was not resolved');
writeFileSync(join(dist, 'index.html'), html);

let gzipTotal = 0;
const files = [join(dist, 'index.html'), ...readdirSync(assets).map((f) => join(assets, f))];
for (const file of files) {
  const data = readFileSync(file);
  const gz = gzipSync(data, { level: 9 });
  writeFileSync(file + '.gz', gz);
  writeFileSync(file + '.br', brotliCompressSync(data, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }));
  if (file.endsWith('.css') || loaded.has(basename(file))) gzipTotal += gz.length;
}
console.log(`dashboard built: ${jsName}, ${cssName}; JS+CSS ${(gzipTotal / 1024).toFixed(1)} KB gzip`);
