// Keys both consoles send: the combinations of the console's key menu, and a US keyboard's keys for
// typing text. Each key has its X keysym and KeyboardEvent code (VNC) and its PC scancode (SPICE;
// 0x100 + n for an E0-prefixed key).

const key = (keysym, code, scan) => ({ keysym, code, scan });

export const CTRL = key(0xffe3, 'ControlLeft', 0x1d);
export const ALT = key(0xffe9, 'AltLeft', 0x38);
export const SHIFT = key(0xffe1, 'ShiftLeft', 0x2a);
const DEL = key(0xffff, 'Delete', 0x153);
const TAB = key(0xff09, 'Tab', 0x0f);
const ESC = key(0xff1b, 'Escape', 0x01);
const PRINT = key(0xff61, 'PrintScreen', 0x137);
const ENTER = key(0xff0d, 'Enter', 0x1c);
const F = [0x3b, 0x3c, 0x3d, 0x3e, 0x3f, 0x40, 0x41, 0x42, 0x43, 0x44, 0x57, 0x58].map((scan, i) =>
  key(0xffbe + i, 'F' + (i + 1), scan),
);

/** The key menu: a label and the keys held together, in order. */
export const COMBOS = [
  { label: 'Ctrl+Alt+Del', keys: [CTRL, ALT, DEL] },
  ...F.map((f, i) => ({ label: 'Ctrl+Alt+F' + (i + 1), keys: [CTRL, ALT, f] })),
  { label: 'Alt+Tab', keys: [ALT, TAB] },
  { label: 'Alt+F4', keys: [ALT, F[3]] },
  { label: 'PrtSc', keys: [PRINT] },
  { label: 'Esc', keys: [ESC] },
  { label: 'Tab', keys: [TAB] },
];

export function combo(label) {
  const found = COMBOS.find((c) => c.label === label);
  return found ? found.keys : null;
}

// A US layout, row by row: the character, its shifted character, its scancode.
const ROWS = [
  ['`~', 0x29], ['1!', 0x02], ['2@', 0x03], ['3#', 0x04], ['4$', 0x05], ['5%', 0x06], ['6^', 0x07],
  ['7&', 0x08], ['8*', 0x09], ['9(', 0x0a], ['0)', 0x0b], ['-_', 0x0c], ['=+', 0x0d],
  ['qQ', 0x10], ['wW', 0x11], ['eE', 0x12], ['rR', 0x13], ['tT', 0x14], ['yY', 0x15], ['uU', 0x16],
  ['iI', 0x17], ['oO', 0x18], ['pP', 0x19], ['[{', 0x1a], [']}', 0x1b], ['\\|', 0x2b],
  ['aA', 0x1e], ['sS', 0x1f], ['dD', 0x20], ['fF', 0x21], ['gG', 0x22], ['hH', 0x23], ['jJ', 0x24],
  ['kK', 0x25], ['lL', 0x26], [';:', 0x27], ['\'"', 0x28],
  ['zZ', 0x2c], ['xX', 0x2d], ['cC', 0x2e], ['vV', 0x2f], ['bB', 0x30], ['nN', 0x31], ['mM', 0x32],
  [',<', 0x33], ['.>', 0x34], ['/?', 0x35],
];
const TYPED = new Map([[' ', { scan: 0x39, shift: false }], ['\n', { scan: ENTER.scan, shift: false }], ['\t', { scan: TAB.scan, shift: false }]]);
for (const [pair, scan] of ROWS) {
  TYPED.set(pair[0], { scan, shift: false });
  TYPED.set(pair[1], { scan, shift: true });
}

/** How `ch` is typed on a US keyboard (scancode and whether Shift is held), or null. */
export function typed(ch) {
  return TYPED.get(ch) || null;
}

/** Characters "Type text" cannot type (not on a US keyboard). */
export function untypable(text) {
  return [...new Set([...text].filter((ch) => !TYPED.has(ch)))];
}

/** Time between two keystrokes: a guest under emulation reads its keyboard slowly, and keys sent
 * faster than that are lost in its small input queue. */
export const KEY_GAP_MS = 40;

export const pause = (ms) => new Promise((done) => setTimeout(done, ms));
