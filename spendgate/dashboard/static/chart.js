// Spend per day as an SVG bar chart drawn here (no chart library), with the same numbers
// in a table for screen readers.

import { h, svg } from "./dom.js";
import { plural, usd } from "./format.js";

const WIDTH = 640;
const HEIGHT = 220;
const PAD = { top: 16, right: 12, bottom: 28, left: 12 };
const DAY_MS = 86_400_000;

/** Every UTC day from the first to the last of `byDay`, days without requests at 0. */
export function everyDay(byDay) {
  if (byDay.length === 0) {
    return [];
  }
  const known = new Map(byDay.map((entry) => [entry.day, entry]));
  const first = Date.parse(`${byDay[0].day}T00:00:00Z`);
  const last = Date.parse(`${byDay[byDay.length - 1].day}T00:00:00Z`);
  const days = [];
  for (let moment = first; moment <= last; moment += DAY_MS) {
    const day = new Date(moment).toISOString().slice(0, 10);
    days.push(known.get(day) || { day, requests: 0, cost: "0" });
  }
  return days;
}

function bars(days) {
  const top = days.reduce((best, entry) => (Number(entry.cost) > Number(best.cost) ? entry : best));
  const max = Number(top.cost) || 1;
  const plotWidth = WIDTH - PAD.left - PAD.right;
  const plotHeight = HEIGHT - PAD.top - PAD.bottom;
  const slot = plotWidth / days.length;
  const width = Math.min(48, Math.max(1, slot * 0.7));
  const chart = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    class: "bars",
    role: "img",
    "aria-labelledby": "chart-caption chart-summary",
  });
  const summary = `${plural(days.length, "day")}, the highest ${usd(top.cost)} on ${top.day}`;
  chart.append(
    svg("desc", { id: "chart-summary" }, summary),
    svg("line", {
      x1: PAD.left,
      x2: WIDTH - PAD.right,
      y1: HEIGHT - PAD.bottom,
      y2: HEIGHT - PAD.bottom,
      class: "axis",
    }),
    svg("text", { x: PAD.left, y: PAD.top - 4, class: "label" }, `max ${usd(top.cost)}`),
  );
  days.forEach((entry, index) => {
    const height = (Number(entry.cost) / max) * plotHeight;
    const bar = svg("rect", {
      x: PAD.left + index * slot + (slot - width) / 2,
      y: HEIGHT - PAD.bottom - height,
      width,
      height,
      class: "bar",
    });
    const requests = plural(entry.requests, "request");
    bar.append(svg("title", {}, `${entry.day}: ${usd(entry.cost)}, ${requests}`));
    chart.append(bar);
  });
  const labels = days.length > 1 ? [0, days.length - 1] : [0];
  for (const index of labels) {
    const anchor = labels.length === 1 ? "middle" : index === 0 ? "start" : "end";
    const x = labels.length === 1 ? WIDTH / 2 : index === 0 ? PAD.left : WIDTH - PAD.right;
    chart.append(
      svg("text", { x, y: HEIGHT - 8, "text-anchor": anchor, class: "label" }, days[index].day),
    );
  }
  return chart;
}

function table(days) {
  const header = ["Day", "Requests", "Cost"].map((name) => h("th", { scope: "col" }, name));
  const rows = days.map((entry) =>
    h(
      "tr",
      {},
      h("th", { scope: "row" }, entry.day),
      h("td", {}, String(entry.requests)),
      h("td", {}, usd(entry.cost)),
    ),
  );
  return h(
    "table",
    { class: "visually-hidden" },
    h("caption", {}, "Spend per day"),
    h("thead", {}, h("tr", {}, ...header)),
    h("tbody", {}, ...rows),
  );
}

/** The chart of `byDay` (the usage report's UTC days, ascending) into `container`. */
export function renderChart(container, byDay) {
  const days = everyDay(byDay);
  if (days.length === 0) {
    container.replaceChildren(h("p", { class: "empty" }, "No spend in the last 30 days."));
    return;
  }
  container.replaceChildren(bars(days), table(days));
}
