// Tessera's try-it page (/demo, service/http/demo.py): plain JavaScript, no build step, no framework.
//
// A sheet is cut into 32x32 tiles here (RGB multiplied by alpha, rounded as the service does),
// sent to POST /v1/encode as uint8 npy, and its latents to POST /v1/decode; the PSNR compares the
// two in 8-bit RGB. Two picked tiles' latents are mixed, (1 - t) z_a + t z_b, and decoded by the
// model's decoder ONNX in onnxruntime-web (vendored with the service) when the server offers
// both, else by POST /v1/decode. The API key, when the server needs one, is sent as
// "Authorization: Bearer" and kept in this page's memory only.
'use strict';

(() => {
  const TILE = 32;
  const TILE_BYTES = TILE * TILE * 3;
  const NPY = 'application/x-npy';
  const VENDOR = 'demo/vendor/onnxruntime-web/';
  const ONNX_WAIT_MS = 15 * 60 * 1000; // the first export of a big model on a small CPU
  const $ = (id) => document.getElementById(id);

  const state = {
    key: '',
    config: null, // GET demo/config.json
    models: [],
    model: null,
    limits: null,
    sheet: null, // {name, n, rows, cols, note, tiles, model, latents, latentShape, decoded}
    picks: [null, null],
    nextPick: 0,
    decoder: null, // {model, session} once the ONNX decoder runs in this page
    decoderToken: 0, // a newer loadDecoder() makes an older one give up
    runtime: null, // Promise of onnxruntime-web's `ort`
    mixing: false,
    mixAgain: false,
    renders: 0,
  };

  // -- .npy, as numpy.save writes it (format 1.0, header padded to 64 bytes) ------------------

  function npyBytes(data, descr, shape) {
    const dims = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
    let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${dims}, }`;
    header += ' '.repeat((64 - ((10 + header.length + 1) % 64)) % 64) + '\n';
    const head = new TextEncoder().encode(header);
    const out = new Uint8Array(10 + head.length + data.byteLength);
    out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]); // \x93NUMPY, version 1.0
    new DataView(out.buffer).setUint16(8, head.length, true);
    out.set(head, 10);
    out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), 10 + head.length);
    return out;
  }

  function readNpy(buffer) {
    const bytes = new Uint8Array(buffer);
    if (bytes[0] !== 0x93 || String.fromCharCode(...bytes.subarray(1, 6)) !== 'NUMPY') {
      throw new Error('the answer is not an .npy array');
    }
    const view = new DataView(buffer);
    const at = bytes[6] === 1 ? 10 : 12;
    const length = bytes[6] === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
    const header = new TextDecoder().decode(bytes.subarray(at, at + length));
    const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
    const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(',').map((s) => s.trim()).filter(Boolean).map(Number);
    const data = buffer.slice(at + length);
    if (descr === '|u1') return { shape, data: new Uint8Array(data) };
    if (descr === '<f4') return { shape, data: new Float32Array(data) };
    throw new Error(`unexpected .npy dtype ${descr}`);
  }

  // -- the API -------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, detail, retryAfter) {
      super(`${status}${code ? ` ${code}` : ''}: ${detail}`);
      Object.assign(this, { status, code, detail, retryAfter });
    }
  }

  async function api(path, options = {}) {
    const headers = { ...(options.headers || {}) };
    if (state.key) headers.Authorization = `Bearer ${state.key}`; // never in the URL
    const response = await fetch(path, { ...options, headers, credentials: 'omit' });
    if (!response.ok) {
      let detail = response.statusText;
      let code = '';
      try {
        const body = await response.json();
        detail = body.detail || detail;
        code = body.code || '';
      } catch (_) { /* not JSON */ }
      throw new ApiError(response.status, code, detail, response.headers.get('Retry-After'));
    }
    return response;
  }

  // a choice of the model select: a model name, or `name|decoder` for one of its other decoders
  function chosen(key) {
    const [model, decoder = 'faithful'] = key.split('|');
    return { model, decoder };
  }

  function label(key) {
    const { model, decoder } = chosen(key);
    return decoder === 'faithful' ? model : `${model} (${decoder} decoder)`;
  }

  async function postNpy(op, key, data, descr, shape) {
    const { model, decoder } = chosen(key);
    const which = op === 'decode' && decoder !== 'faithful' ? `&decoder=${encodeURIComponent(decoder)}` : '';
    const response = await api(`v1/${op}?model=${encodeURIComponent(model)}${which}`, {
      method: 'POST',
      headers: { 'Content-Type': NPY, Accept: NPY },
      body: npyBytes(data, descr, shape),
    });
    return readNpy(await response.arrayBuffer());
  }

  // -- status lines --------------------------------------------------------------------------

  function setStatus(text, kind = '') {
    const el = $('status');
    el.textContent = text;
    el.className = kind;
  }

  function showError(err, what) {
    if (err instanceof ApiError && err.status === 401) {
      setStatus('this server needs an API key: type it above and press Enter', 'error');
      $('api-key').focus();
    } else {
      setStatus(`${what}: ${err.message}`, 'error');
    }
  }

  function setPath(stage, path, text) {
    const el = $('decode-path');
    el.dataset.state = stage; // loading | ready | unavailable
    el.dataset.path = path; // onnx | server: what the slider's mixes are decoded with now
    el.textContent = text;
  }

  // -- models and the decoder in the page ----------------------------------------------------

  async function loadModels() {
    try {
      const body = await (await api('v1/models')).json();
      const rgb = body.models.filter((m) => (m.channels || 'RGB') === 'RGB'); // the page shows RGB tiles
      const choices = rgb.flatMap((m) => (m.decoders || ['faithful']).map((d) => ({ m, key: d === 'faithful' ? m.name : `${m.name}|${d}` })));
      state.models = choices.map((c) => c.key);
      state.limits = body.limits;
      const select = $('model');
      select.replaceChildren(...choices.map(({ m, key }) => new Option(`${label(key)} (${m.latent_shape.join('x')}, ratio ${m.compression_ratio})`, key)));
      state.model = state.models.includes(state.model) ? state.model : (state.models.includes(body.default) ? body.default : state.models[0]);
      select.value = state.model;
      select.disabled = false;
      setStatus(state.sheet ? 'ready' : 'ready: drop a sprite sheet');
      loadDecoder();
      if (state.sheet) roundTrip();
    } catch (err) {
      showError(err, 'cannot list the models');
    }
  }

  function loadRuntime() {
    if (!state.runtime) {
      state.runtime = new Promise((resolve, reject) => {
        const script = document.createElement('script');
        script.src = VENDOR + state.config.onnxruntime_web.script;
        script.onload = () => {
          const ort = window.ort;
          if (!ort) return reject(new Error('onnxruntime-web did not load'));
          ort.env.wasm.numThreads = 1; // threads need a cross-origin isolated page
          ort.env.wasm.proxy = false;
          ort.env.wasm.wasmPaths = new URL(VENDOR, document.baseURI).href;
          return resolve(ort);
        };
        script.onerror = () => reject(new Error('onnxruntime-web could not be loaded from this server'));
        document.head.append(script);
      });
    }
    return state.runtime;
  }

  async function fetchDecoder(key, token) {
    const { model, decoder } = chosen(key);
    const url = `demo/models/${encodeURIComponent(model)}/decoder.onnx` + (decoder === 'faithful' ? '' : `?decoder=${encodeURIComponent(decoder)}`);
    const deadline = Date.now() + ONNX_WAIT_MS;
    for (;;) {
      try {
        return new Uint8Array(await (await api(url)).arrayBuffer());
      } catch (err) {
        if (!(err instanceof ApiError) || err.status !== 503 || Date.now() > deadline || token !== state.decoderToken) throw err;
        await new Promise((resolve) => setTimeout(resolve, 1000 * (Number(err.retryAfter) || 2)));
      }
    }
  }

  async function loadDecoder() {
    const model = state.model;
    const token = ++state.decoderToken;
    state.decoder = null;
    const missing = state.config.onnxruntime_web_missing || state.config.onnx_export_missing;
    if (missing) {
      setPath('unavailable', 'server', `/v1/decode on the server for ${label(model)}: ${missing}`);
      return;
    }
    setPath('loading', 'server', `/v1/decode on the server while the decoder ONNX of ${label(model)} is prepared…`);
    try {
      const ort = await loadRuntime();
      const bytes = await fetchDecoder(model, token);
      if (token !== state.decoderToken) return;
      const session = await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'] });
      if (token !== state.decoderToken) return;
      state.decoder = { model, session };
      setPath('ready', 'onnx', `onnxruntime-web ${ort.env.versions.web} in this page (the decoder ONNX of ${label(model)})`);
      renderMix();
    } catch (err) {
      if (token === state.decoderToken) setPath('unavailable', 'server', `/v1/decode on the server for ${label(model)} (${err.message})`);
    }
  }

  // -- the sheet and its round trip ----------------------------------------------------------

  async function loadSheet(file) {
    let bitmap;
    try {
      bitmap = await createImageBitmap(file, { premultiplyAlpha: 'none', colorSpaceConversion: 'none' });
    } catch (_) {
      setStatus(`${file.name} is not an image this browser can read`, 'error');
      return;
    }
    let cols = Math.floor(bitmap.width / TILE);
    let rows = Math.floor(bitmap.height / TILE);
    if (!cols || !rows) {
      setStatus(`${file.name} is ${bitmap.width}x${bitmap.height}, smaller than one 32x32 tile`, 'error');
      return;
    }
    const notes = [];
    if (cols * TILE !== bitmap.width || rows * TILE !== bitmap.height) notes.push('sides cut to multiples of 32');
    const limits = state.limits || { max_tiles_per_request: 1024, max_body_bytes: 16 << 20 };
    const max = Math.min(limits.max_tiles_per_request, Math.floor((limits.max_body_bytes - 256) / TILE_BYTES));
    if (rows * cols > max) {
      cols = Math.min(cols, max);
      rows = Math.max(1, Math.floor(max / cols));
      notes.push(`first ${rows * cols} tiles (the server takes ${max} per request)`);
    }
    const canvas = document.createElement('canvas');
    canvas.width = cols * TILE;
    canvas.height = rows * TILE;
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    const rgba = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    const n = rows * cols;
    const tiles = new Uint8Array(n * TILE_BYTES);
    for (let t = 0; t < n; t++) {
      const top = Math.floor(t / cols) * TILE;
      const left = (t % cols) * TILE;
      for (let y = 0; y < TILE; y++) {
        for (let x = 0; x < TILE; x++) {
          const src = ((top + y) * canvas.width + left + x) * 4;
          const dst = t * TILE_BYTES + (y * TILE + x) * 3;
          const alpha = rgba[src + 3];
          for (let c = 0; c < 3; c++) tiles[dst + c] = Math.floor((rgba[src + c] * alpha + 127) / 255); // tiles.premultiply
        }
      }
    }
    state.sheet = { name: file.name, n, rows, cols, note: notes.length ? ` (${notes.join('; ')})` : '', tiles };
    state.picks = [null, null];
    state.nextPick = 0;
    $('sheets').hidden = false;
    $('mixer').hidden = true;
    drawSheets();
    await roundTrip();
  }

  async function roundTrip() {
    const sheet = state.sheet;
    const model = state.model;
    if (!sheet || !model) return;
    sheet.decoded = null;
    const psnrEl = $('psnr');
    psnrEl.textContent = '…';
    delete psnrEl.dataset.value;
    drawSheets();
    setStatus(`encoding and decoding ${sheet.n} tiles of ${sheet.name} with ${label(model)}…`);
    try {
      const latents = await postNpy('encode', model, sheet.tiles, '|u1', [sheet.n, TILE, TILE, 3]);
      const decoded = await postNpy('decode', model, latents.data, '<f4', latents.shape);
      if (state.sheet !== sheet || state.model !== model) return; // a newer sheet or model
      Object.assign(sheet, { model, latents: latents.data, latentShape: latents.shape.slice(1), decoded: decoded.data });
    } catch (err) {
      showError(err, 'the round trip failed');
      return;
    }
    const value = psnr(sheet.tiles, sheet.decoded);
    psnrEl.dataset.value = String(value);
    psnrEl.textContent = Number.isFinite(value) ? value.toFixed(2) : '∞';
    $('tile-count').textContent = String(sheet.n);
    $('sheet-note').textContent = sheet.note;
    $('mixer').hidden = false;
    drawSheets();
    setStatus(`${sheet.name}: ${sheet.n} tiles, latents ${sheet.latentShape.join('x')} each; click two tiles to mix them`);
    if (state.picks[0] !== null && state.picks[1] !== null) renderMix();
  }

  function psnr(a, b) {
    let sum = 0;
    for (let i = 0; i < a.length; i++) {
      const d = a[i] - b[i];
      sum += d * d;
    }
    const mse = sum / a.length;
    return mse === 0 ? Infinity : 10 * Math.log10((255 * 255) / mse);
  }

  // -- drawing -------------------------------------------------------------------------------

  function putTiles(ctx, tiles, count, cols) {
    const image = ctx.createImageData(cols * TILE, Math.ceil(count / cols) * TILE);
    for (let t = 0; t < count; t++) {
      const top = Math.floor(t / cols) * TILE;
      const left = (t % cols) * TILE;
      for (let p = 0; p < TILE * TILE; p++) {
        const dst = ((top + Math.floor(p / TILE)) * image.width + left + (p % TILE)) * 4;
        const src = t * TILE_BYTES + p * 3;
        image.data[dst] = tiles[src];
        image.data[dst + 1] = tiles[src + 1];
        image.data[dst + 2] = tiles[src + 2];
        image.data[dst + 3] = 255;
      }
    }
    ctx.putImageData(image, 0, 0);
  }

  function drawSheets() {
    const sheet = state.sheet;
    const scale = Math.max(1, Math.min(8, Math.floor(360 / (Math.max(sheet.rows, sheet.cols) * TILE))));
    for (const [id, tiles] of [['original', sheet.tiles], ['roundtrip', sheet.decoded]]) {
      const canvas = $(id);
      canvas.width = sheet.cols * TILE;
      canvas.height = sheet.rows * TILE;
      canvas.style.width = `${canvas.width * scale}px`;
      const ctx = canvas.getContext('2d');
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      if (!tiles) continue;
      putTiles(ctx, tiles, sheet.n, sheet.cols);
      state.picks.forEach((index, which) => {
        if (index === null) return;
        ctx.strokeStyle = which === 0 ? '#ffd400' : '#00d0ff';
        ctx.strokeRect((index % sheet.cols) * TILE + 0.5, Math.floor(index / sheet.cols) * TILE + 0.5, TILE - 1, TILE - 1);
      });
    }
  }

  function drawTile(id, rgb) {
    putTiles($(id).getContext('2d'), rgb, 1, 1);
  }

  // -- two tiles and the slider --------------------------------------------------------------

  function pick(event) {
    const sheet = state.sheet;
    if (!sheet || !sheet.decoded) return;
    const canvas = event.currentTarget;
    const rect = canvas.getBoundingClientRect();
    const col = Math.floor(((event.clientX - rect.left) * canvas.width) / rect.width / TILE);
    const row = Math.floor(((event.clientY - rect.top) * canvas.height) / rect.height / TILE);
    const index = row * sheet.cols + col;
    if (col < 0 || col >= sheet.cols || row < 0 || index >= sheet.n) return;
    const which = state.nextPick;
    state.picks[which] = index;
    state.nextPick = 1 - which;
    $(which === 0 ? 'pick-a' : 'pick-b').textContent = `tile ${index} (row ${row}, column ${col})`;
    drawTile(which === 0 ? 'tile-a' : 'tile-b', sheet.tiles.subarray(index * TILE_BYTES, (index + 1) * TILE_BYTES));
    drawSheets();
    if (state.picks[0] !== null && state.picks[1] !== null) {
      $('mix-t').disabled = false;
      renderMix();
    }
  }

  function mixLatents(sheet, a, b, t) {
    const size = sheet.latentShape.reduce((x, y) => x * y, 1);
    const za = sheet.latents.subarray(a * size, (a + 1) * size);
    const zb = sheet.latents.subarray(b * size, (b + 1) * size);
    const z = new Float32Array(size);
    for (let i = 0; i < size; i++) z[i] = (1 - t) * za[i] + t * zb[i];
    return z;
  }

  async function decodeInPage(session, z, shape) {
    const output = await session.run({ latents: new window.ort.Tensor('float32', z, [1, ...shape]) });
    const planes = output.tiles.data; // [1, 3, 32, 32], clamped to [0, 1] by the graph
    const rgb = new Uint8Array(TILE_BYTES);
    for (let p = 0; p < TILE * TILE; p++) {
      for (let c = 0; c < 3; c++) rgb[p * 3 + c] = Math.round(Math.min(1, Math.max(0, planes[c * TILE * TILE + p])) * 255);
    }
    return rgb;
  }

  async function renderMix() {
    if (state.mixing) { // one decode at a time; the latest slider position wins
      state.mixAgain = true;
      return;
    }
    state.mixing = true;
    try {
      do {
        state.mixAgain = false;
        const sheet = state.sheet;
        const [a, b] = state.picks;
        if (!sheet || !sheet.latents || a === null || b === null) return;
        const t = Number($('mix-t').value);
        const z = mixLatents(sheet, a, b, t);
        let rgb = null;
        let path = 'server';
        const decoder = state.decoder;
        if (decoder && decoder.model === sheet.model) {
          try {
            rgb = await decodeInPage(decoder.session, z, sheet.latentShape);
            path = 'onnx';
          } catch (err) {
            state.decoder = null;
            setPath('unavailable', 'server', `/v1/decode on the server (onnxruntime-web failed: ${err.message})`);
          }
        }
        if (rgb === null) rgb = (await postNpy('decode', sheet.model, z, '<f4', [1, ...sheet.latentShape])).data;
        if (state.sheet !== sheet) return;
        drawTile('mix', rgb);
        const mix = $('mix');
        Object.assign(mix.dataset, { t: String(t), a: String(a), b: String(b), path, renders: String(++state.renders) });
      } while (state.mixAgain);
    } catch (err) {
      showError(err, 'the mix could not be decoded');
    } finally {
      state.mixing = false;
    }
  }

  // -- wiring --------------------------------------------------------------------------------

  function applyKey() {
    const key = $('api-key').value.trim();
    if (key === state.key && state.models.length) return;
    state.key = key;
    loadModels();
  }

  async function start() {
    $('api-key').addEventListener('change', applyKey);
    $('api-key').addEventListener('keydown', (event) => { if (event.key === 'Enter') applyKey(); });
    $('file').addEventListener('change', (event) => {
      const file = event.target.files[0];
      if (file) loadSheet(file);
    });
    const drop = $('drop');
    for (const name of ['dragenter', 'dragover']) {
      drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add('over'); });
    }
    drop.addEventListener('dragleave', () => drop.classList.remove('over'));
    drop.addEventListener('drop', (event) => {
      event.preventDefault();
      drop.classList.remove('over');
      const file = event.dataTransfer.files[0];
      if (file) loadSheet(file);
    });
    $('model').addEventListener('change', (event) => {
      state.model = event.target.value;
      loadDecoder();
      roundTrip();
    });
    $('original').addEventListener('click', pick);
    $('roundtrip').addEventListener('click', pick);
    $('mix-t').addEventListener('input', (event) => {
      $('mix-t-value').textContent = Number(event.target.value).toFixed(2);
      renderMix();
    });
    try {
      state.config = await (await fetch('demo/config.json')).json();
    } catch (err) {
      setStatus(`cannot read demo/config.json: ${err.message}`, 'error');
      return;
    }
    await loadModels();
  }

  start();
})();
