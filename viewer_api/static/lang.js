// The language of the message pages (a closed link, the code page): Chinese first, or the
// choice made on the film page (the same localStorage key); the button switches and remembers it.
(function () {
  "use strict";

  const root = document.documentElement;
  const button = document.getElementById("lang");

  function setLang(lang) {
    root.classList.add("js"); // with the script, one language shows (both without it)
    root.classList.toggle("en", lang === "en");
    root.lang = lang === "en" ? "en" : "zh-CN";
    if (button) button.textContent = lang === "en" ? "中文" : "EN";
  }

  let lang = "zh";
  try {
    lang = localStorage.getItem("cloudfilm-lang") || "zh";
  } catch (e) {
    // no storage: Chinese
  }
  setLang(lang);
  if (button) {
    button.addEventListener("click", () => {
      const next = root.classList.contains("en") ? "zh" : "en";
      setLang(next);
      try {
        localStorage.setItem("cloudfilm-lang", next);
      } catch (e) {
        // private mode: the choice lasts for this page only
      }
    });
  }
})();
