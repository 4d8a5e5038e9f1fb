// The board follows /events (server-sent events): each message is the whole board as JSON.
// Plain DOM, no framework and no build step. Values are set as text, never as HTML.
"use strict";

const previous = new Map(); // row key -> what it showed last time, to flash the rows that changed

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("data-")) node.setAttribute(name, value);
    else node[name] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Browsers may wrap text after a hyphen, which would split "C-CHEN" or "RX-2026-00050" over two
// lines: every word with a hyphen in it (ids, dates) is kept whole in a nowrap span. Long reason
// codes (CONTROLLED_SUBSTANCE) may wrap after an underscore instead of widening a narrow column;
// ids never hold one, so no id is broken there.
function withWholeIds(text) {
  const nodes = [];
  for (const part of String(text).split(/(\S*-\S*)/)) {
    if (part.includes("-")) nodes.push(el("span", { class: "id" }, part));
    else if (part) part.split(/(?<=_)/).forEach((piece, i) => nodes.push(...(i ? [el("wbr")] : []), piece));
  }
  return nodes;
}

function idList(ids) {
  const nodes = [];
  ids.forEach((id, i) => nodes.push(...(i ? [", "] : []), el("span", { class: "id" }, id)));
  return nodes;
}

function flashIfChanged(row, key, shown) {
  const before = previous.get(key);
  if (before !== undefined && before !== shown) row.classList.add("flash");
  previous.set(key, shown);
  return row;
}

function time(iso) {
  return iso ? new Date(iso).toLocaleTimeString([], { hour12: false }) : "";
}

function daysUntil(isoDate) {
  const today = new Date();
  today.setHours(0, 0, 0, 0);
  return Math.round((new Date(isoDate + "T00:00:00") - today) / 86400000);
}

function expiryCell(lot) {
  if (!lot.expiry_date) return el("td", {}, "");
  const days = daysUntil(lot.expiry_date);
  // Only dates that matter soon get a countdown: a wall of "in 730 d" would hide the ones that do.
  const hint = days < 0 ? ` (${-days} d ago) ` : days <= 90 ? ` (in ${days} d) ` : " ";
  const cls = lot.alert === "expired" || days < 0 ? "expiry gone" : lot.alert === "nearing_expiry" ? "expiry soon" : "expiry";
  const alert =
    lot.alert === "expired" ? badge("expired", "expired") : lot.alert === "nearing_expiry" ? badge("soon", "expires soon") : null;
  return el("td", { class: cls }, el("span", { class: "id" }, lot.expiry_date), el("span", { class: "muted" }, hint), alert);
}

function badge(kind, text) {
  return el("span", { class: `badge ${kind}`, "data-badge": kind }, text);
}

const BUCKETS = ["available", "reserved", "dispatched", "quarantine", "expired", "in_transit"];

const BUCKET_LABELS = {
  available: "available",
  reserved: "reserved",
  dispatched: "on the road",
  quarantine: "quarantine",
  expired: "expired",
  in_transit: "in transit",
};

// A transfer on its way between two warehouses, under both: "→ 190 × LEV50 to PH-KARA-BULAK".
function transferRow(warehouseId, transfer) {
  const out = transfer.direction === "out";
  const text = `${out ? "→" : "←"} ${transfer.quantity} × ${transfer.drug_code} in transit ${out ? "to" : "from"} `;
  return el(
    "tr",
    { class: "transfer", "data-warehouse": warehouseId, "data-transfer": transfer.transfer_id, "data-direction": transfer.direction },
    el(
      "td",
      { colSpan: 8 },
      text,
      el("span", { class: "id" }, transfer.other_warehouse_id),
      " · ",
      el("span", { class: "id code" }, transfer.transfer_id),
    ),
  );
}

function figure(bucket, units) {
  // data-label names the figure where a phone's layout has no column header above it.
  return el("td", { class: `num ${bucket}${units === 0 ? " zero" : ""}`, "data-label": BUCKET_LABELS[bucket] }, units);
}

function renderStock(stock) {
  const body = document.querySelector("#stock tbody");
  const rows = [];
  for (const warehouse of stock) {
    const id = el("span", { class: "id" }, warehouse.warehouse_id);
    const title = warehouse.name ? [...withWholeIds(warehouse.name), " · ", id] : [id];
    rows.push(el("tr", { class: "warehouse", "data-warehouse": warehouse.warehouse_id }, el("th", { colSpan: 8 }, ...title)));
    for (const transfer of warehouse.in_transit || []) {
      const key = `transfer:${warehouse.warehouse_id}:${transfer.transfer_id}`;
      rows.push(flashIfChanged(transferRow(warehouse.warehouse_id, transfer), key, String(transfer.quantity)));
    }
    for (const drug of warehouse.drugs) {
      const low = drug.low_stock_threshold === null ? null : badge("low", `low stock (< ${drug.low_stock_threshold})`);
      const key = `drug:${warehouse.warehouse_id}:${drug.drug_code}`;
      const row = el(
        "tr",
        { class: "drug", "data-warehouse": warehouse.warehouse_id, "data-drug": drug.drug_code },
        el(
          "td",
          { class: "drug-name", colSpan: 2 },
          el("span", { class: "code id" }, drug.drug_code),
          drug.name ? el("span", { class: "name" }, drug.name) : null,
          low,
        ),
        ...BUCKETS.map((b) => figure(b, drug[b])),
      );
      rows.push(flashIfChanged(row, key, BUCKETS.map((b) => drug[b]).join("/") + (low ? "!" : "")));
      for (const lot of drug.lots) {
        const lotKey = `lot:${warehouse.warehouse_id}:${lot.lot_id}`;
        const lotRow = el(
          "tr",
          { class: "lot", "data-warehouse": warehouse.warehouse_id, "data-drug": drug.drug_code, "data-lot": lot.lot_id },
          el("td", { class: "lot-id" }, lot.lot_id),
          expiryCell(lot),
          ...BUCKETS.map((b) => figure(b, lot[b])),
        );
        rows.push(flashIfChanged(lotRow, lotKey, BUCKETS.map((b) => lot[b]).join("/") + (lot.alert ?? "")));
      }
    }
  }
  body.replaceChildren(...rows);
  document.getElementById("stock-empty").hidden = rows.length > 0;
}

function renderPrescriptions(prescriptions) {
  document.getElementById("rx-total").textContent = `· ${prescriptions.total} in all`;
  const tiles = prescriptions.counts.map((c) =>
    flashIfChanged(
      el("div", { class: `tile state-${c.state}${c.count ? "" : " zero"}`, "data-state": c.state },
        el("span", { class: "count" }, c.count),
        el("span", { class: "label" }, c.label)),
      `tile:${c.state}`,
      String(c.count),
    ),
  );
  document.getElementById("rx-counts").replaceChildren(...tiles);
  const rows = prescriptions.latest.map((p) =>
    flashIfChanged(
      el("tr", { "data-prescription": p.prescription_id, "data-state": p.state },
        el("td", { class: "code rx-id" }, p.prescription_id),
        el("td", { class: "rx-state" }, el("span", { class: `state state-${p.state}` }, p.label)),
        el("td", { class: "note" }, ...withWholeIds(p.note)),
        el("td", { class: "code where" }, p.warehouse_id),
        el("td", { class: "code who" }, p.courier_id),
        el("td", { class: "muted at" }, time(p.updated_at))),
      `rx:${p.prescription_id}`,
      p.state + p.note,
    ),
  );
  document.querySelector("#rx-latest tbody").replaceChildren(...rows);
}

function renderCouriers(couriers) {
  const ids = (kind, label, list) =>
    el("td", { class: `code ids ${kind}`, "data-label": label }, ...(list.length ? idList(list) : ["–"]));
  const rows = couriers.map((c) =>
    flashIfChanged(
      el("tr", { "data-courier": c.courier_id },
        el("td", { class: "code courier-id" }, c.courier_id),
        ids("to-pickup", "to pick up", c.to_pickup),
        ids("on-the-road", "on the road", c.on_the_road),
        el("td", { class: "num delivered", "data-label": "delivered" }, c.delivered),
        el("td", { class: "num failed", "data-label": "failed" }, c.failed),
        el("td", { class: "num missed", "data-label": "missed offers" }, c.missed_offers)),
      `courier:${c.courier_id}`,
      [c.to_pickup.join(), c.on_the_road.join(), c.delivered, c.failed, c.missed_offers].join("/"),
    ),
  );
  document.querySelector("#couriers tbody").replaceChildren(...rows);
  document.getElementById("couriers-empty").hidden = rows.length > 0;
}

function renderAlerts(alerts) {
  const items = alerts.map((a) =>
    el(
      "li",
      { "data-kind": a.kind },
      el("span", { class: "muted" }, time(a.at)),
      " ",
      badge(a.kind, a.kind.replace(/_/g, " ")),
      " ",
      ...withWholeIds(a.text),
    ),
  );
  document.getElementById("alerts").replaceChildren(...items);
  document.getElementById("alerts-empty").hidden = items.length > 0;
}

function render(state) {
  renderStock(state.stock);
  renderPrescriptions(state.prescriptions);
  renderCouriers(state.couriers);
  renderAlerts(state.alerts);
  const last = state.last_event_at ? ` · last at ${time(state.last_event_at)}` : "";
  const unreadable = state.unreadable ? ` · ${state.unreadable} unreadable` : "";
  document.getElementById("summary").textContent = `${state.events} events read${last}${unreadable}`;
  document.body.dataset.version = state.version;
  // The picture follows the board: a new version may be a new plan, a stop done, a transfer.
  document.getElementById("county").src = `/county.svg?v=${state.version}`;
}

function setConnection(status, text) {
  const node = document.getElementById("connection");
  node.className = `connection ${status}`;
  node.dataset.connection = status;
  node.textContent = text;
}

function connect() {
  // EventSource reconnects by itself after a dropped connection; the first message is the whole board again.
  const source = new EventSource("/events");
  source.addEventListener("open", () => setConnection("live", "live"));
  source.addEventListener("error", () => setConnection("connecting", "reconnecting…"));
  source.addEventListener("state", (message) => {
    setConnection("live", "live");
    render(JSON.parse(message.data));
  });
}

connect();
