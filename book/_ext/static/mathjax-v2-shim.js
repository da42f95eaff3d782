// ipywidgets' HTML manager typesets widget labels with the MathJax 2 call MathJax.Hub.Queue; the book loads
// MathJax 3, which has no Hub. Route the old call to MathJax 3's typesetPromise (loaded deferred, after MathJax).
(function () {
  if (window.MathJax && !window.MathJax.Hub) {
    window.MathJax.Hub = {
      Queue: function (job) {
        var el = job && job[2];
        var mj = window.MathJax;
        if (mj.startup && mj.startup.promise) {
          mj.startup.promise.then(function () { return mj.typesetPromise(el ? [el] : undefined); });
        }
      },
    };
  }
})();
