// One build step: bundles src/main.js (esbuild) and src/styles.css (Tailwind) into hashed, minified
// files under dist/assets, writes dist/index.html naming them, and stores gzip and brotli copies next
// to each file so the controller serves them compressed without compressing on every request.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { brotliCompressSync, constants, gzipSync } from 'node:zlib';
import * as esbuild from 'esbuild';

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
const jsName = basename(
  Object.entries(js.metafile.outputs).find(([, o]) => o.entryPoint === 'src/main.js')[0],
);

const tmpCss = join(dist, 'app.css');
execFileSync(join('node_modules', '.bin', 'tailwindcss'), ['-i', 'src/styles.css', '-o', tmpCss, '--minify'], {
  stdio: ['ignore', 'ignore', 'inherit'],
});
const css = readFileSync(tmpCss);
rmSync(tmpCss);
const cssName = 'app-' + createHash('sha256').update(css).digest('hex').slice(0, 8).toUpperCase() + '.css';
writeFileSync(join(assets, cssName), css);

// Each view's markup lives in src/views/; the page takes them in where it names them.
const html = readFileSync('src/index.html', 'utf8')
  .replace(/^( *)<!-- include (views\/[a-z-]+\.html) -->$/gm, (_, indent, file) =>
    readFileSync(join('src', file), 'utf8').trimEnd().replace(/^/gm, indent),
  )
  .replace('@CSS@', cssName)
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
  // The dashboard's weight: what every page loads (console chunks come only with a console).
  if (!file.endsWith('.html') && !basename(file).startsWith('chunk-')) gzipTotal += gz.length;
}
console.log(`dashboard built: ${jsName}, ${cssName}; JS+CSS ${(gzipTotal / 1024).toFixed(1)} KB gzip`);
