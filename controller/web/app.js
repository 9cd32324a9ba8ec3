/* Flotilla dashboard (docs/dashboard.md). Plain JS, no framework, no build
 * step, nothing loaded from anywhere but the controller. It reads the JSON
 * API with the token kept in sessionStorage and refreshes every few seconds.
 * Everything the fleet reports goes into the page as text, never as HTML. */
'use strict';
(function () {
  const TOKEN_KEY = 'flotilla.token';
  const REFRESH_MS = 5000;
  const MAX_ROWS = 500;
  const FAILED_STATES = new Set(['REJECTED', 'ROLLED_BACK', 'REVERTING', 'FAILED']);
  const FIELDS = new Set(['id', 'label', 'version', 'health', 'model', 'arch']);
  const page = document.body.dataset.page;
  const $ = (id) => document.getElementById(id);
  let token = null;
  let timer = null;
  let devices = []; // GET /api/v1/devices
  let health = {};  // GET /api/v1/fleet "health": device -> installing | failed

  /* ------------------------------------------------------------ helpers */

  // el('td', {class: 'num', text: 3}, child...): text and attributes only.
  function el(tag, props, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = String(v);
      else e.setAttribute(k, String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === undefined || kid === null || kid === false) continue;
      e.append(kid instanceof Node ? kid : String(kid));
    }
    return e;
  }
  const num = (v) => el('td', {class: 'num', text: v === undefined || v === null ? '-' : v});
  function table(headers, rows) {
    const th = headers.map((h) => h.startsWith('#') ? el('th', {class: 'num', text: h.slice(1)})
      : el('th', {text: h}));
    return el('table', null, el('thead', null, el('tr', null, th)), el('tbody', null, rows));
  }
  const muted = (text) => el('p', {class: 'muted', text});
  function bar(frac) {
    const fill = el('span');
    fill.style.width = (Math.min(1, Math.max(0, frac)) * 100).toFixed(1) + '%';
    return el('div', {class: 'bar'}, fill);
  }
  function pct(x) {
    if (x === undefined || x === null) return '-';
    return (x * 100).toFixed(x > 0 && x < 0.1 ? 1 : 0) + '%';
  }
  function when(ts) {
    if (!ts) return '-';
    return new Date(ts * 1000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
  }
  function ago(ts) {
    if (!ts) return 'never';
    const s = Math.max(0, Math.round(Date.now() / 1000 - ts));
    if (s < 90) return s + ' s ago';
    if (s < 5400) return Math.round(s / 60) + ' min ago';
    if (s < 129600) return Math.round(s / 3600) + ' h ago';
    return Math.round(s / 86400) + ' d ago';
  }
  const cmpVer = (a, b) => String(a).localeCompare(String(b), undefined, {numeric: true});
  const badge = (cls, text) => el('span', {class: 'badge ' + cls, text});
  const chips = (list) => list.map((t) => el('span', {class: 'chip', text: t}));
  const labelList = (labels) => Object.entries(labels || {}).map(([k, v]) => k + '=' + v);
  const versionList = (versions) => Object.entries(versions || {}).map(([m, v]) => m + '@' + v);
  function setStatus(text, stale) {
    $('status').textContent = text;
    $('status').classList.toggle('stale', !!stale);
  }

  /* ------------------------------------------------------------ token, API */

  // A token in the fragment (#token=...) is moved to sessionStorage and
  // removed from the address, so it is neither kept in history nor shown.
  function takeToken() {
    const m = /^#(?:.*&)?token=([^&]*)/.exec(location.hash);
    if (m) {
      let t = m[1];
      try { t = decodeURIComponent(t); } catch (e) { /* not %-encoded: as typed */ }
      if (t) sessionStorage.setItem(TOKEN_KEY, t);
      history.replaceState(null, '', location.pathname + location.search);
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  class AuthError extends Error {}
  async function api(path) {
    const r = await fetch(path, {
      headers: {Authorization: 'Bearer ' + token},
      cache: 'no-store', credentials: 'omit', redirect: 'error',
    });
    if (r.status === 401) throw new AuthError('the controller refused this token (HTTP 401)');
    if (!r.ok) {
      let msg = '';
      try { msg = (await r.json()).error || ''; } catch (e) { /* not JSON */ }
      const err = new Error(path + ': HTTP ' + r.status + (msg ? ': ' + msg : ''));
      err.status = r.status;
      throw err;
    }
    return r.json();
  }

  function showLogin(msg) {
    clearTimeout(timer);
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $('content').hidden = true;
    $('logout').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = msg || '';
    setStatus(msg ? 'token refused' : 'no token', true);
    $('token').focus();
  }

  function start() {
    token = takeToken();
    if (!token) {
      showLogin('');
      return;
    }
    $('login').hidden = true;
    $('content').hidden = false;
    $('logout').hidden = false;
    refresh();
  }

  async function refresh() {
    clearTimeout(timer);
    if (!document.hidden) {
      try {
        await (page === 'device' ? refreshDevice() : refreshFleet());
        setStatus('updated ' + new Date().toLocaleTimeString(), false);
        document.body.dataset.loaded = 'true';
      } catch (e) {
        if (e instanceof AuthError) {
          showLogin(e.message);
          return;
        }
        setStatus('refresh failed: ' + e.message, true);
      }
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  /* ------------------------------------------------------------ fleet page */

  // The device list is the expensive read (10 000 devices: ~2 MB and
  // ~30 ms of the controller's CPU, docs/dashboard.md): past BIG_FLEET
  // devices it is read on every BIG_FLEET_EVERY-th refresh only; the summary
  // and the rollouts on every one.
  const BIG_FLEET = 2000;
  const BIG_FLEET_EVERY = 6;
  let cycle = 0;
  async function refreshFleet() {
    const listNow = cycle++ % BIG_FLEET_EVERY === 0 || devices.length <= BIG_FLEET;
    const [fleet, ro, dl] = await Promise.all([api('/api/v1/fleet'), api('/api/v1/rollouts'),
      listNow ? api('/api/v1/devices?all=1') : null]);
    const rollouts = ro.rollouts || [];
    health = fleet.health || {};
    if (dl) devices = dl.devices || [];
    renderVersions(fleet);
    renderRollouts(rollouts);
    renderFailures(fleet, rollouts);
    renderDevices();
  }

  function renderVersions(f) {
    const d = f.devices;
    $('fleet-summary').replaceChildren(d.total + ' devices: ', badge('online', d.online + ' online'),
      ' ', badge('offline', d.offline + ' offline'),
      f.truncated ? ' (summary truncated: too many models, versions or unhealthy devices)' : '');
    const cards = f.models.map((m) => {
      const rows = m.versions.filter((v) => v.devices > 0)
        .sort((a, b) => cmpVer(b.version, a.version))
        .map((v) => el('tr', {'data-model': m.model, 'data-version': v.version},
          el('td', {text: v.version}), el('td', null, bar(v.devices / Math.max(1, m.devices))),
          num(v.devices), num(pct(v.devices / Math.max(1, m.devices)))));
      return el('div', {class: 'card', 'data-model': m.model},
        el('h3', {text: m.model + ' '}, el('span', {class: 'muted', text: m.devices + ' devices'})),
        rows.length ? table(['version', '', '#devices', '#share'], rows)
          : muted('no device runs it yet'));
    });
    $('versions').replaceChildren(...(cards.length ? cards : [muted('no model reported yet')]));
  }

  function selectorText(sel) {
    if (!sel) return 'all devices';
    const parts = labelList(sel.labels);
    if (sel.arch) parts.push('arch ' + sel.arch);
    if (sel.devices) parts.push(sel.devices.length + ' listed devices');
    return parts.join(', ') || 'all devices';
  }

  function waves(r) {
    const unit = r.wave_unit === 'count' ? '' : '%';
    return el('div', {class: 'waves'}, (r.waves || []).map((w, i) => {
      let cls = 'wave';
      if (r.state === 'completed' || i < r.wave || (i === r.wave && r.wave_done_at)) cls += ' done';
      else if (i === r.wave) cls += ' current';
      return el('span', {class: cls, title: 'wave ' + (i + 1), text: w + unit});
    }));
  }

  function renderRollouts(list) {
    if (!list.length) {
      $('rollouts').replaceChildren(muted('no rollouts'));
      return;
    }
    const rows = list.slice().reverse().map((r) => {
      const c = r.counts || {};
      const rate = c.attempted ? c.failed / c.attempted : null;
      const crossed = !!r.gate_crossed_at;
      return el('tr', {'data-rollout': r.id, 'data-state': r.state},
        num(r.id),
        el('td', null, el('strong', {text: r.model + '@' + r.version}),
          el('div', {class: 'muted', text: selectorText(r.select)})),
        el('td', null, badge('state-' + r.state, r.state)),
        el('td', null, waves(r), el('div', {class: 'muted',
          text: 'wave ' + (r.wave + 1) + ' of ' + (r.waves || []).length + ', soak ' + r.soak_s + ' s'})),
        num(c.targets), num(c.attempted), num(c.succeeded), num(c.failed), num(c.in_progress),
        el('td', {class: 'gate' + (crossed ? ' breached' : '')},
          'failed ' + pct(rate) + ' (max ' + pct(r.max_failure_rate) + ', min sample ' +
          r.min_sample + ')', crossed ? el('div', {text: 'crossed ' + when(r.gate_crossed_at)}) : null),
        el('td', {class: 'reason'}, r.reason || '',
          el('div', {class: 'muted', text: 'by ' + (r.created_by || '?') + ', updated ' +
            ago(r.updated_at)})));
    });
    $('rollouts').replaceChildren(table(['#id', 'release', 'state', 'waves', '#targets',
      '#attempted', '#ok', '#failed', '#in progress', 'gate', 'last decision'], rows));
  }

  function renderFailures(f, rollouts) {
    const byRelease = new Map();
    for (const r of rollouts) {
      const k = r.model + '@' + r.version;
      const a = byRelease.get(k) || {attempted: 0, failed: 0, n: 0};
      a.attempted += (r.counts && r.counts.attempted) || 0;
      a.failed += (r.counts && r.counts.failed) || 0;
      a.n++;
      byRelease.set(k, a);
    }
    const rows = [];
    const row = (model, v, ro) => el('tr', {'data-release': model + '@' + v.version},
      el('td', {text: model}), el('td', {text: v.version}), num(v.devices),
      num(v.attempted), num(v.succeeded), num(v.failed), num(v.in_progress),
      el('td', {class: 'num rate' + (v.failure_rate > 0 ? ' bad' : ''), text: pct(v.failure_rate)}),
      el('td', {class: 'muted', text: ro ? ro.failed + ' failed of ' + ro.attempted +
        ' attempted (' + ro.n + (ro.n === 1 ? ' rollout)' : ' rollouts)') : '-'}));
    for (const m of f.models) {
      const known = new Map(m.versions.map((v) => [v.version, v]));
      // Versions only a rollout knows of so far (no device reported them yet).
      for (const k of byRelease.keys()) {
        const [model, version] = [k.slice(0, k.indexOf('@')), k.slice(k.indexOf('@') + 1)];
        if (model === m.model && !known.has(version)) {
          known.set(version, {version, devices: 0, attempted: 0, succeeded: 0, failed: 0,
            in_progress: 0, failure_rate: null});
        }
      }
      for (const v of [...known.values()].sort((a, b) => cmpVer(b.version, a.version))) {
        const ro = byRelease.get(m.model + '@' + v.version);
        if (v.attempted || ro) rows.push(row(m.model, v, ro));
      }
    }
    $('failures').replaceChildren(rows.length ? table(['model', 'version', '#running',
      '#installs', '#ok', '#failed', '#in progress', '#failure rate', 'rollouts'], rows)
      : muted('no installs reported yet'));
  }

  function deviceHealth(d) {
    const h = health[d.id];
    if (h === 'failed') return 'failed';
    if (!d.online) return 'offline';
    return h || 'ok';
  }

  // "a b field:value": every term must match (case-insensitive).
  function parseQuery(q) {
    return q.toLowerCase().split(/\s+/).filter(Boolean).map((t) => {
      const i = t.indexOf(':');
      const f = i > 0 ? t.slice(0, i) : '';
      return FIELDS.has(f) ? {field: f, value: t.slice(i + 1)} : {field: '', value: t};
    });
  }

  function matches(d, h, terms) {
    const labels = labelList(d.labels).map((s) => s.toLowerCase());
    const vers = Object.entries(d.versions || {}).map(([m, v]) => [m.toLowerCase(), v.toLowerCase()]);
    const id = d.id.toLowerCase();
    const arch = (d.arch || '').toLowerCase();
    return terms.every(({field, value}) => {
      switch (field) {
        case 'id': return id.includes(value);
        case 'label': return labels.some((l) => value.includes('=') ? l === value : l.includes(value));
        case 'version': return vers.some(([m, v]) => v === value || m + '@' + v === value);
        case 'model': return vers.some(([m]) => m === value);
        case 'health': return h === value;
        case 'arch': return arch === value;
        default:
          return id.includes(value) || h === value || arch === value ||
            labels.some((l) => l.includes(value)) ||
            vers.some(([m, v]) => v.includes(value) || (m + '@' + v).includes(value));
      }
    });
  }

  function renderDevices() {
    const q = $('q').value.trim();
    const terms = parseQuery(q);
    const hits = [];
    for (const d of devices) {
      const h = deviceHealth(d);
      if (matches(d, h, terms)) hits.push([d, h]);
    }
    let count = hits.length + ' of ' + devices.length + ' devices';
    if (hits.length > MAX_ROWS) count += ', the first ' + MAX_ROWS + ' shown';
    $('device-count').textContent = count;
    const rows = hits.slice(0, MAX_ROWS).map(([d, h]) => el('tr', {'data-device': d.id, 'data-health': h},
      el('td', null, el('a', {href: '/ui/device.html?id=' + encodeURIComponent(d.id), text: d.id})),
      el('td', null, badge('health-' + h, h)),
      el('td', null, chips(versionList(d.versions))),
      el('td', null, chips(labelList(d.labels))),
      el('td', {text: d.arch || '-'}), el('td', {text: d.agent || '-'}),
      el('td', {title: when(d.last_seen), text: ago(d.last_seen)})));
    $('devices').replaceChildren(rows.length ? table(['device', 'health', 'versions', 'labels',
      'arch', 'agent', 'last seen'], rows) : muted(devices.length ? 'no device matches' : 'no devices yet'));
  }

  function onSearch() {
    const q = $('q').value.trim();
    const params = new URLSearchParams(location.search);
    if (q) params.set('q', q); else params.delete('q');
    const s = params.toString();
    history.replaceState(null, '', location.pathname + (s ? '?' + s : ''));
    renderDevices();
  }

  /* ------------------------------------------------------------ device page */

  function installHealth(models, online) {
    let h = 'ok';
    for (const m of models) {
      const st = m.install && m.install.state;
      if (!st || st === 'IDLE' || st === 'COMMITTED') continue;
      if (FAILED_STATES.has(st)) return 'failed';
      h = 'installing';
    }
    return online ? h : 'offline';
  }

  function props(pairs) {
    return el('dl', {class: 'props'}, pairs.map(([k, v]) => [el('dt', {text: k}),
      el('dd', null, v instanceof Node || Array.isArray(v) ? v : String(v))]));
  }

  function slotText(name, s) {
    let t = name + ': ' + (s.status || '?');
    if (s.version) t += ' ' + s.version;
    if (s.sequence !== undefined) t += ' #' + s.sequence;
    return t;
  }

  function installCell(i) {
    if (!i) return el('td', {class: 'muted', text: 'none'});
    const cls = FAILED_STATES.has(i.state) ? 'health-failed'
      : i.state === 'COMMITTED' || i.state === 'IDLE' ? 'health-ok' : 'health-installing';
    const done = i.bytes_total ? ' ' + pct(i.bytes_done / i.bytes_total) + ' of ' +
      (i.bytes_total / 1048576).toFixed(1) + ' MiB' : '';
    return el('td', null, badge(cls, i.state), ' ' + (i.version || '') + done,
      i.error ? el('div', {class: 'reason', text: i.error}) : null);
  }

  async function refreshDevice() {
    const id = new URLSearchParams(location.search).get('id');
    if (!id) throw new Error('no device id in the address (?id=...)');
    let r;
    try {
      r = await api('/api/v1/devices/' + encodeURIComponent(id));
    } catch (e) {
      if (e.status !== 404) throw e;
      $('device-title').textContent = 'Device ' + id;
      $('device-info').replaceChildren(muted('unknown device: the controller has never heard of it'));
      $('device-models').replaceChildren();
      $('device-events').replaceChildren();
      return;
    }
    const d = r.device;
    const models = r.models || [];
    const h = installHealth(models, d.online);
    document.title = 'Flotilla: ' + d.id;
    $('device-title').replaceChildren('Device ' + d.id + ' ', badge('health-' + h, h));
    const t = r.telemetry;
    $('device-info').replaceChildren(props([
      ['id', d.id],
      ['state', badge(d.online ? 'online' : 'offline', d.online ? 'online' : 'offline')],
      ['last seen', when(d.last_seen) + ' (' + ago(d.last_seen) + ')'],
      ['labels', chips(labelList(d.labels))],
      ['hardware', [d.arch || '?', d.ram_mb >= 0 && d.ram_mb !== undefined ? d.ram_mb + ' MB RAM' : '',
        'accelerators: ' + ((d.accelerators || []).join(', ') || 'none'),
        'backends: ' + ((d.backends || []).join(', ') || 'none')].filter(Boolean).join(', ')],
      ['agent', d.agent || '-'],
      ['telemetry', t ? 'stream ' + t.stream + ', highest seq ' + t.highest + ', ' + t.missing_seqs +
        ' missing, ' + t.dropped + ' dropped (updated ' + ago(t.updated) + ')' : 'no batch yet'],
    ]));
    const mrows = models.map((m) => el('tr', {'data-model': m.model},
      el('td', {text: m.model}), el('td', {text: m.current || '-'}), el('td', {text: m.version || '-'}),
      el('td', null, chips(Object.entries(m.slots || {}).map(([k, s]) => slotText(k, s)))),
      installCell(m.install)));
    $('device-models').replaceChildren(mrows.length ? table(['model', 'slot', 'version', 'slots',
      'install'], mrows) : muted('no model reported'));
    const erows = (r.events || []).map((e) => el('tr', {'data-event': e.kind, 'data-seq': e.seq},
      el('td', {text: when(e.t)}), el('td', {text: e.kind}),
      el('td', {text: e.model ? e.model + '@' + (e.version || '?') : '-'}),
      el('td', {text: e.reason || ''}),
      el('td', null, e.text || '', e.details ? el('details', null, el('summary', {text: 'details'}),
        el('pre', {class: 'details', text: JSON.stringify(e.details, null, 2)})) : null)));
    $('device-events').replaceChildren(erows.length ? table(['time (device clock)', 'kind', 'release',
      'reason', 'text'], erows) : muted('no events'));
  }

  /* ------------------------------------------------------------ start */

  $('login').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = $('token').value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    $('token').value = '';
    start();
  });
  $('logout').addEventListener('click', () => showLogin(''));
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && token) refresh();
  });
  window.addEventListener('hashchange', () => {
    if (/token=/.test(location.hash)) start();
  });
  if (page === 'fleet') {
    $('q').value = new URLSearchParams(location.search).get('q') || '';
    $('q').addEventListener('input', onSearch);
  }
  start();
})();
