// A QR code encoder, written from ISO/IEC 18004: byte mode, error correction level M, versions 1-20
// (up to 666 bytes: enough for a join token or the install one-liner). Returns the module matrix; qrSvg draws it.
import { s } from './ui.js';

// Level M, per version: [EC codewords per block, [blocks, data codewords each], ...].
const BLOCKS_M = [null,
  [10, [1, 16]], [16, [1, 28]], [26, [1, 44]], [18, [2, 32]], [24, [2, 43]], [16, [4, 27]], [18, [4, 31]],
  [22, [2, 38], [2, 39]], [22, [3, 36], [2, 37]], [26, [4, 43], [1, 44]], [30, [1, 50], [4, 51]],
  [22, [6, 36], [2, 37]], [22, [8, 37], [1, 38]], [24, [4, 40], [5, 41]], [24, [5, 41], [5, 42]],
  [28, [7, 45], [3, 46]], [28, [10, 46], [1, 47]], [26, [9, 43], [4, 44]], [26, [3, 44], [11, 45]],
  [26, [3, 41], [13, 42]]];
const ALIGN = [null, [], [6, 18], [6, 22], [6, 26], [6, 30], [6, 34], [6, 22, 38], [6, 24, 42], [6, 26, 46],
  [6, 28, 50], [6, 30, 54], [6, 32, 58], [6, 34, 62], [6, 26, 46, 66], [6, 26, 48, 70], [6, 26, 50, 74],
  [6, 30, 54, 78], [6, 30, 56, 82], [6, 30, 58, 86], [6, 34, 62, 90]];
const MAX_VERSION = 20;

// --- GF(256) with x^8 + x^4 + x^3 + x^2 + 1, and Reed-Solomon ------------------------------

const EXP = new Uint8Array(512);
const LOG = new Uint8Array(256);
for (let i = 0, x = 1; i < 255; i++) {
  EXP[i] = x;
  LOG[x] = i;
  x <<= 1;
  if (x & 0x100) x ^= 0x11d;
}
for (let i = 255; i < 512; i++) EXP[i] = EXP[i - 255];
const mul = (a, b) => (a && b ? EXP[LOG[a] + LOG[b]] : 0);

function generator(n) {
  // Coefficients of (x - a^0)(x - a^1)...(x - a^(n-1)), highest power first (leading 1).
  let g = [1];
  for (let i = 0; i < n; i++) {
    const next = new Array(g.length + 1).fill(0);
    g.forEach((c, j) => { next[j] ^= c; next[j + 1] ^= mul(c, EXP[i]); });
    g = next;
  }
  return g;
}

function ecCodewords(data, n) {
  const g = generator(n);
  const rem = new Array(n).fill(0);
  for (const d of data) {
    const factor = d ^ rem[0];
    rem.shift();
    rem.push(0);
    for (let i = 0; i < n; i++) rem[i] ^= mul(g[i + 1], factor);
  }
  return rem;
}

// --- codewords --------------------------------------------------------------------------

function capacity(v) {
  const [, ...groups] = BLOCKS_M[v];
  return groups.reduce((n, [b, d]) => n + b * d, 0);
}

function codewords(bytes, v) {
  const bits = [];
  const put = (value, len) => { for (let i = len - 1; i >= 0; i--) bits.push((value >>> i) & 1); };
  put(0b0100, 4);
  put(bytes.length, v < 10 ? 8 : 16);
  for (const b of bytes) put(b, 8);
  const total = capacity(v) * 8;
  put(0, Math.min(4, total - bits.length));
  while (bits.length % 8) bits.push(0);
  const data = [];
  for (let i = 0; i < bits.length; i += 8) data.push(bits.slice(i, i + 8).reduce((a, b) => (a << 1) | b, 0));
  for (let pad = 0xec; data.length < capacity(v); pad ^= 0xec ^ 0x11) data.push(pad);

  const [ecLen, ...groups] = BLOCKS_M[v];
  const blocks = [];
  let at = 0;
  for (const [count, len] of groups) {
    for (let i = 0; i < count; i++) {
      const d = data.slice(at, at + len);
      at += len;
      blocks.push({d, e: ecCodewords(d, ecLen)});
    }
  }
  const out = [];
  const longest = Math.max(...blocks.map((b) => b.d.length));
  for (let i = 0; i < longest; i++) for (const b of blocks) if (i < b.d.length) out.push(b.d[i]);
  for (let i = 0; i < ecLen; i++) for (const b of blocks) out.push(b.e[i]);
  return out;
}

// --- the matrix ---------------------------------------------------------------------------

function bch(value, poly, polyBits) {
  let rem = value << (polyBits - 1);
  for (let i = 31; i >= polyBits - 1; i--) if ((rem >>> i) & 1) rem ^= poly << (i - polyBits + 1);
  return (value << (polyBits - 1)) | rem;
}

const MASKS = [
  (r, c) => (r + c) % 2 === 0,
  (r) => r % 2 === 0,
  (r, c) => c % 3 === 0,
  (r, c) => (r + c) % 3 === 0,
  (r, c) => (Math.floor(r / 2) + Math.floor(c / 3)) % 2 === 0,
  (r, c) => ((r * c) % 2) + ((r * c) % 3) === 0,
  (r, c) => (((r * c) % 2) + ((r * c) % 3)) % 2 === 0,
  (r, c) => (((r + c) % 2) + ((r * c) % 3)) % 2 === 0,
];

function build(v, words, mask) {
  const n = 17 + 4 * v;
  const m = Array.from({length: n}, () => new Array(n).fill(0));
  const fn = Array.from({length: n}, () => new Array(n).fill(false));
  const set = (r, c, dark) => { m[r][c] = dark ? 1 : 0; fn[r][c] = true; };

  for (const [r0, c0] of [[0, 0], [0, n - 7], [n - 7, 0]]) {
    for (let r = -1; r <= 7; r++) {
      for (let c = -1; c <= 7; c++) {
        const rr = r0 + r; const cc = c0 + c;
        if (rr < 0 || cc < 0 || rr >= n || cc >= n) continue;
        const ring = Math.max(Math.abs(r - 3), Math.abs(c - 3));
        set(rr, cc, ring !== 2 && ring !== 4);
      }
    }
  }
  for (let i = 8; i < n - 8; i++) { set(6, i, i % 2 === 0); set(i, 6, i % 2 === 0); }
  const pos = ALIGN[v];
  for (const r of pos) {
    for (const c of pos) {
      if ((r === 6 && c === 6) || (r === 6 && c === n - 7) || (r === n - 7 && c === 6)) continue;
      for (let dr = -2; dr <= 2; dr++) {
        for (let dc = -2; dc <= 2; dc++) set(r + dr, c + dc, Math.max(Math.abs(dr), Math.abs(dc)) !== 1);
      }
    }
  }
  // Format information (level M = 00), both copies, and the dark module.
  const format = bch(mask, 0x537, 11) ^ 0x5412;
  const fbit = (i) => ((format >>> i) & 1) === 1;
  for (let i = 0; i <= 5; i++) set(i, 8, fbit(i));
  set(7, 8, fbit(6));
  set(8, 8, fbit(7));
  set(8, 7, fbit(8));
  for (let i = 9; i < 15; i++) set(8, 14 - i, fbit(i));
  for (let i = 0; i < 8; i++) set(8, n - 1 - i, fbit(i));
  for (let i = 8; i < 15; i++) set(n - 15 + i, 8, fbit(i));
  set(n - 8, 8, true);
  if (v >= 7) {
    const info = bch(v, 0x1f25, 13);
    for (let i = 0; i < 18; i++) {
      const dark = ((info >>> i) & 1) === 1;
      const a = n - 11 + (i % 3); const b = Math.floor(i / 3);
      set(b, a, dark);
      set(a, b, dark);
    }
  }
  // Data: two-module columns from the right, zigzagging up and down, skipping the vertical timing column.
  let bit = 0;
  const total = words.length * 8;
  for (let right = n - 1; right >= 1; right -= 2) {
    if (right === 6) right = 5;
    const upward = ((n - 1 - right) >> 1) % 2 === 0;
    for (let k = 0; k < n; k++) {
      const r = upward ? n - 1 - k : k;
      for (const c of [right, right - 1]) {
        if (fn[r][c]) continue;
        const dark = bit < total ? (words[bit >> 3] >>> (7 - (bit & 7))) & 1 : 0;
        bit++;
        m[r][c] = dark ^ (MASKS[mask](r, c) ? 1 : 0);
      }
    }
  }
  return m;
}

// --- choosing the mask: the standard's four penalty rules -----------------------------------

function penalty(m) {
  const n = m.length;
  let score = 0;
  const lines = [];
  for (let i = 0; i < n; i++) { lines.push(m[i]); lines.push(m.map((row) => row[i])); }
  for (const line of lines) {
    let run = 1;
    for (let i = 1; i <= n; i++) {
      if (i < n && line[i] === line[i - 1]) { run++; continue; }
      if (run >= 5) score += run - 2;
      run = 1;
    }
    const text = line.join('');
    for (const pat of ['10111010000', '00001011101']) {
      for (let i = text.indexOf(pat); i !== -1; i = text.indexOf(pat, i + 1)) score += 40;
    }
  }
  for (let r = 0; r < n - 1; r++) {
    for (let c = 0; c < n - 1; c++) {
      const x = m[r][c];
      if (x === m[r][c + 1] && x === m[r + 1][c] && x === m[r + 1][c + 1]) score += 3;
    }
  }
  const dark = m.reduce((a, row) => a + row.reduce((b, x) => b + x, 0), 0);
  score += 10 * Math.floor(Math.abs((dark * 100) / (n * n) - 50) / 5);
  return score;
}

/** Encode text (UTF-8 bytes) → {version, mask, size, modules: rows of 0/1}, or null when it does not fit. */
export function qrEncode(text, forceMask) {
  const bytes = new TextEncoder().encode(text);
  let v = 1;
  while (v <= MAX_VERSION && 4 + (v < 10 ? 8 : 16) + bytes.length * 8 > capacity(v) * 8) v++;
  if (v > MAX_VERSION) return null;
  const words = codewords(bytes, v);
  let best = null;
  for (let mask = 0; mask < 8; mask++) {
    if (forceMask !== undefined && mask !== forceMask) continue;
    const m = build(v, words, mask);
    const p = penalty(m);
    if (!best || p < best.p) best = {p, m, mask};
  }
  return {version: v, mask: best.mask, size: best.m.length, modules: best.m};
}

/** The QR code as an SVG image (dark on white, with the 4-module quiet zone), or null when the text is too long. */
export function qrSvg(text, label) {
  const q = qrEncode(text);
  if (!q) return null;
  const size = q.size + 8;
  let d = '';
  q.modules.forEach((row, r) => row.forEach((x, c) => { if (x) d += `M${c + 4},${r + 4}h1v1h-1z`; }));
  return s('svg', {class: 'qr', viewBox: `0 0 ${size} ${size}`, role: 'img', 'aria-label': label,
    'shape-rendering': 'crispEdges'},
  s('rect', {width: size, height: size, fill: '#fff'}), s('path', {d, fill: '#000'}));
}
