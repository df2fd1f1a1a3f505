// Live refresh: with "live" ticked, the page's <main> is fetched again every few seconds.
(() => {
  let on = sessionStorage.getItem("plan-regen-live") === "1";
  const wire = () => {
    const box = document.getElementById("live");
    if (!box) return null;
    box.checked = on;
    box.addEventListener("change", () => {
      on = box.checked;
      sessionStorage.setItem("plan-regen-live", on ? "1" : "0");
    });
    return box;
  };
  const first = wire();
  if (!first) return;
  setInterval(async () => {
    if (!on) return;
    const answer = await fetch(location.href, { headers: { Accept: "text/html" } });
    if (!answer.ok) return;
    const page = new DOMParser().parseFromString(await answer.text(), "text/html");
    const fresh = page.getElementById("main");
    if (!fresh) return;
    document.getElementById("main").replaceWith(fresh);
    wire();
  }, Number(first.dataset.every || 5) * 1000);
})();
