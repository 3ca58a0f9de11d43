// Small DOM helpers every part of the page uses (no state).

export const $ = (id) => document.getElementById(id);

export function show(id, visible) {
  $(id).hidden = !visible;
}

/** A CSS custom property of the page (the stems' colours, the text colour), as the theme sets it now. */
export function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}
