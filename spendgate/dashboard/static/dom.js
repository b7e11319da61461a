// Building DOM without HTML strings: text goes in as text, so a key named
// "<img onerror=...>" stays a name (the page's CSP also refuses HTML sinks).

/** h("td", {class: "x", dataset: {label: "Name"}}, "text", child...) */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) {
      continue;
    }
    if (name === "dataset") {
      Object.assign(element.dataset, value);
    } else if (name === "hidden") {
      element.hidden = true;
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  element.append(...children.filter((child) => child !== null && child !== undefined));
  return element;
}

/** Text for sighted users plus words only a screen reader hears, e.g. the key's name. */
export function labelled(text, hiddenText) {
  return [text, h("span", { class: "visually-hidden" }, ` ${hiddenText}`)];
}

const SVG = "http://www.w3.org/2000/svg";

export function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) {
    element.setAttribute(name, String(value));
  }
  element.append(...children);
  return element;
}

/** Open a modal dialog; when it closes, focus goes to what `returnFocus()` finds then. */
export function openDialog(dialog, returnFocus) {
  dialog.returnFocus = returnFocus;
  dialog.showModal();
}

/** [data-close] buttons close the dialog; Escape closes it too (the browser's own). */
export function setUpDialog(dialog, onClose = () => {}) {
  for (const button of dialog.querySelectorAll("[data-close]")) {
    button.addEventListener("click", () => dialog.close());
  }
  dialog.addEventListener("close", () => {
    onClose();
    const target = dialog.returnFocus ? dialog.returnFocus() : null;
    dialog.returnFocus = null;
    if (target) {
      target.focus();
    }
  });
}
