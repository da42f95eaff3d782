// Phones: a figure wider than the text column is not shrunk until its labels are unreadable. It is shown at 45 % of
// its size or more (9 pt text at 150 dpi stays about 8 px tall) and scrolls sideways in its own box. Slider frames
// (ipywidgets) keep their own layout.
(function () {
  const PHONE = window.matchMedia("(max-width: 575.98px)");
  const MIN_SCALE = 0.45;

  function figures() {
    return [...document.querySelectorAll(".bd-article .cell_output img, .bd-article figure img")]
      .filter((img) => !img.closest(".jupyter-widgets, .widget-stack"));
  }

  function fit(img) {
    const box = img.parentElement;
    if (!PHONE.matches || !img.naturalWidth) {
      img.style.width = img.style.maxWidth = box.style.overflowX = "";
      return;
    }
    box.style.overflowX = "auto";
    img.style.maxWidth = "none";
    img.style.width = Math.max(Math.min(box.clientWidth, img.naturalWidth), MIN_SCALE * img.naturalWidth) + "px";
  }

  function fitAll() {
    for (const img of figures()) {
      if (img.complete) fit(img);
      else img.addEventListener("load", () => fit(img), { once: true });
    }
  }

  document.addEventListener("DOMContentLoaded", fitAll);
  PHONE.addEventListener("change", fitAll);
  window.addEventListener("resize", fitAll);
})();
