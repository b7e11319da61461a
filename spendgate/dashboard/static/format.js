// How money, times and limits read on the page. Money arrives as exact decimal strings
// ("12.5", "0.000034") and is shown as written, never through a binary float.

/** "$1,234.5" from "1234.5". */
export function usd(amount) {
  const [whole, fraction] = String(amount).split(".");
  const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return `$${grouped}${fraction ? `.${fraction}` : ""}`;
}

/** "2026-01-31 10:00 UTC" from an RFC 3339 time (the API's times are UTC). */
export function when(iso) {
  if (!iso) {
    return "—";
  }
  const moment = new Date(iso);
  if (Number.isNaN(moment.getTime())) {
    return iso;
  }
  return `${moment.toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

/** "2026-01-31 10:00:05 UTC": for request rows, where seconds matter. */
export function whenSeconds(iso) {
  const moment = new Date(iso);
  return Number.isNaN(moment.getTime())
    ? iso
    : `${moment.toISOString().slice(0, 19).replace("T", " ")} UTC`;
}

/** "2026-01-31" */
export function day(iso) {
  return iso ? String(iso).slice(0, 10) : "—";
}

export function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

/** "$500 / 1 month", "$5 / 3 hours" */
export function recurringSummary(recurring) {
  return `${usd(recurring.amount)} / ${plural(recurring.every, recurring.unit)}`;
}

/** "$50 all-time · $500 / 1 month", or "No limits". */
export function limitsSummary(key) {
  const parts = [];
  if (key.usage_limit !== null && key.usage_limit !== undefined) {
    parts.push(`${usd(key.usage_limit)} all-time`);
  }
  if (key.recurring_limit) {
    parts.push(recurringSummary(key.recurring_limit));
  }
  return parts.length ? parts.join(" · ") : "No limits";
}

/** A whole number with thousands separators. */
export function count(value) {
  return Number(value).toLocaleString("en-US");
}
