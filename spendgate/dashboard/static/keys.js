// The key list and the plan allowance.

import { h, labelled } from "./dom.js";
import { day, limitsSummary, plural, usd, when } from "./format.js";

const ACTIONS = [
  ["limits", "Update limits"],
  ["toggle", null], // Disable or Enable, by status
  ["iam", "IAM rules"],
  ["usage", "Usage details"],
  ["delete", "Delete"],
];

function cell(label, ...content) {
  return h("td", { dataset: { label } }, ...content);
}

function statusBadge(status) {
  const active = status === "active";
  return h("span", { class: `badge ${active ? "on" : "off"}` }, active ? "Active" : "Inactive");
}

function createdCell(key) {
  const created = key.created_at;
  return cell("Created", h("time", { datetime: created, title: when(created) }, day(created)));
}

function usageCell(key) {
  const limit = key.usage_limit;
  return cell(
    "Usage",
    usd(key.usage),
    limit === null || limit === undefined ? null : h("span", { class: "sub" }, ` of ${usd(limit)}`),
  );
}

function periodCell(key) {
  const period = key.current_period;
  if (!period) {
    return cell("Current Period", h("span", { class: "muted" }, "No recurring limit"));
  }
  return cell(
    "Current Period",
    usd(period.usage),
    h("span", { class: "sub" }, ` of ${usd(key.recurring_limit.amount)}`),
    h("span", { class: "sub line", title: period.resets_at }, ` resets ${when(period.resets_at)}`),
  );
}

function rulesCell(key) {
  const rules = key.iam_rules_count || 0;
  return cell(
    "IAM Rules",
    rules
      ? h("span", { class: "badge info" }, `Configured (${plural(rules, "rule")})`)
      : h("span", { class: "muted" }, "Not configured"),
  );
}

function actionsCell(key) {
  const buttons = ACTIONS.map(([action, text]) => {
    const words = text || (key.status === "active" ? "Disable" : "Enable");
    return h(
      "button",
      {
        type: "button",
        class: action === "delete" ? "small danger" : "small secondary",
        dataset: { action, keyId: key.id },
      },
      ...labelled(words, key.name),
    );
  });
  return cell("Actions", h("div", { class: "row-actions" }, ...buttons));
}

function keyRow(key) {
  return h(
    "tr",
    { dataset: { keyId: key.id } },
    h("th", { scope: "row", dataset: { label: "Name" } }, key.name),
    cell("API Key", h("code", { class: "preview" }, key.preview)),
    cell("Status", statusBadge(key.status)),
    createdCell(key),
    usageCell(key),
    periodCell(key),
    cell("Limits", limitsSummary(key)),
    rulesCell(key),
    actionsCell(key),
  );
}

/** Render the project's keys and its allowance ("N of M keys used"). */
export function renderKeys(listing) {
  const keys = listing.data;
  document.getElementById("keys-body").replaceChildren(...keys.map(keyRow));
  document.getElementById("keys-empty").hidden = keys.length > 0;
  renderAllowance(listing.plan);
}

function renderAllowance(plan) {
  const used = plan.key_count;
  const limit = plan.key_limit;
  document.getElementById("allowance-text").textContent =
    `${used} of ${limit} keys used (${plan.name} plan)`;
  const meter = document.getElementById("allowance-meter");
  meter.max = Math.max(limit, 1);
  meter.value = Math.min(used, meter.max);
  const full = used >= limit;
  const create = document.getElementById("create-open");
  const blocked = document.getElementById("create-blocked");
  create.disabled = full;
  blocked.hidden = !full;
  blocked.textContent = full
    ? `This project has reached its ${plan.name} plan's limit of ${plural(limit, "API key")}. ` +
      "Delete unused keys or upgrade the plan to create another."
    : "";
}

/** The action button of a key, found again after the list was rendered anew. */
export function actionButton(keyId, action) {
  return document.querySelector(
    `button[data-key-id="${CSS.escape(keyId)}"][data-action="${CSS.escape(action)}"]`,
  );
}
