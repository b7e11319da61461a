// Usage details: totals, spend per day, spend by model and the requests, a page at a time.

import { ApiError } from "./api.js";
import { renderChart } from "./chart.js";
import { h, openDialog, setUpDialog } from "./dom.js";
import { count, usd, whenSeconds } from "./format.js";
import { actionButton } from "./keys.js";

function totals(data) {
  const entries = [
    ["Requests", count(data.totals.requests)],
    ["Cost", usd(data.totals.cost)],
    ["Prompt tokens", count(data.totals.prompt_tokens)],
    ["Completion tokens", count(data.totals.completion_tokens)],
  ];
  return entries.map(([name, value]) => h("div", {}, h("dt", {}, name), h("dd", {}, value)));
}

function modelRow(entry) {
  return h(
    "tr",
    {},
    h("th", { scope: "row" }, entry.model),
    h("td", {}, count(entry.requests)),
    h("td", {}, usd(entry.cost)),
  );
}

function requestRow(row) {
  const failed = row.status >= 400;
  return h(
    "tr",
    { dataset: { requestId: row.request_id } },
    h("td", {}, h("time", { datetime: row.created_at }, whenSeconds(row.created_at))),
    h("td", {}, row.model, row.stream ? h("span", { class: "sub" }, " (stream)") : null),
    h("td", {}, h("span", { class: `badge ${failed ? "off" : "on"}` }, String(row.status))),
    h("td", {}, `${count(row.prompt_tokens)} / ${count(row.completion_tokens)}`),
    h("td", {}, usd(row.cost)),
    h("td", {}, `${count(row.duration_ms)} ms`),
    h("td", {}, row.billing === "byok" ? "Own provider key" : "Credits"),
    h("td", {}, h("code", {}, row.request_id)),
  );
}

export function setUpUsage(page) {
  const $ = (id) => document.getElementById(id);
  const dialog = $("usage-dialog");
  const error = $("usage-error");
  const newer = $("usage-newer");
  const older = $("usage-older");
  const size = $("usage-page-size");
  // cursors[i] opens page i; page 0 needs none.
  let key = null;
  let cursors = [null];
  let index = 0;

  function render(data) {
    $("usage-totals").replaceChildren(...totals(data));
    renderChart($("usage-chart"), data.by_day);
    $("usage-models").tBodies[0].replaceChildren(...data.by_model.map(modelRow));
    $("usage-requests").tBodies[0].replaceChildren(...data.requests.map(requestRow));
    $("usage-none").hidden = data.requests.length > 0 || index > 0;
    cursors.length = index + 1;
    if (data.next_cursor) {
      cursors.push(data.next_cursor);
    }
    $("usage-page").textContent = `Page ${index + 1}`;
    newer.disabled = index === 0;
    older.disabled = !data.next_cursor;
  }

  async function load(keyId) {
    error.hidden = true;
    const data = await page.admin().usage(keyId, Number(size.value), cursors[index]);
    if (key !== null && key.id === keyId) {
      render(data);
    }
  }

  async function turn(step, button) {
    index += step;
    try {
      await load(key.id);
    } catch (failure) {
      index -= step;
      if (!(failure instanceof ApiError)) {
        throw failure;
      }
      error.textContent = failure.message;
      error.hidden = false;
    }
    if (button.disabled) {
      (button === older ? newer : older).focus();
    }
  }

  newer.addEventListener("click", () => turn(-1, newer));
  older.addEventListener("click", () => turn(1, older));
  size.addEventListener("change", () => {
    cursors = [null];
    index = 0;
    turn(0, size);
  });
  setUpDialog(dialog, () => {
    key = null;
    $("usage-requests").tBodies[0].replaceChildren();
  });

  return async (chosen) => {
    key = chosen;
    cursors = [null];
    index = 0;
    $("usage-title").textContent = `Usage details of ${chosen.name}`;
    await load(chosen.id);
    openDialog(dialog, () => actionButton(chosen.id, "usage"));
  };
}
