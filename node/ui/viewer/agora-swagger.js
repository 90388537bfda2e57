// Starts Swagger UI on the node's own OpenAPI document. A file rather than an inline script,
// so the page's Content-Security-Policy can allow scripts from the node and nothing else.
window.addEventListener("DOMContentLoaded", function () {
  var container = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: container.dataset.spec,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
  });
});
