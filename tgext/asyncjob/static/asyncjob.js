/* tgext.asyncjob progress widget.
 *
 * Finds every element with a data-asyncjob-status attribute (see progress_snippet())
 * and polls that JSON URL until the job ends, updating the bar and texts. No inline
 * script and no dependencies, so it works under a strict Content-Security-Policy.
 * When a job ends the widget fires a bubbling "asyncjob:finished" event whose
 * detail is the job's status, for pages that want to react (reload, redirect...).
 */
(function () {
  'use strict';
  if (window.tgextAsyncjob) {            // included twice (several snippets): set up once
    window.tgextAsyncjob.scan(document);
    return;
  }

  var POLL_MS = 500;                     // while the job is live
  var MAX_BACKOFF_MS = 5000;             // while the status cannot be read
  var TEXT = {
    queued: 'Queued', running: 'Running', succeeded: 'Completed', failed: 'Failed',
    cancelled: 'Cancelled', not_found: 'Not found', unknown: 'Unknown'
  };
  var FINAL = { succeeded: true, failed: true, cancelled: true, not_found: true };

  function part(widget, name) {
    return widget.querySelector('.asyncjob-' + name);
  }

  function setPercent(widget, percent) {
    var bar = part(widget, 'bar');
    var fill = part(widget, 'fill');
    var label = part(widget, 'percent');
    if (typeof percent === 'number') {
      bar.setAttribute('aria-valuenow', String(percent));
      fill.style.width = percent + '%';
      label.textContent = percent + '%';
    } else {                              // no aria-valuenow: an indeterminate bar
      bar.removeAttribute('aria-valuenow');
      label.textContent = '';
    }
  }

  function messageOf(status) {
    var data = status.data;
    if (typeof data === 'string') { return data; }
    if (data && typeof data === 'object' && typeof data.message === 'string') {
      return data.message;
    }
    return status.detail || '';
  }

  function render(widget, status) {
    var state = status.state || 'unknown';
    widget.setAttribute('data-state', state);
    // Waiting has no percent: the stripe and "Queued" say it (as the server renders it).
    setPercent(widget, state === 'queued' ? null : status.percent);
    part(widget, 'state').textContent = TEXT[state] || state;
    part(widget, 'message').textContent = messageOf(status);
    var error = part(widget, 'error');
    var tb = part(widget, 'traceback');
    if (status.error) {
      // A message meant for the user (JobFailed) alone, otherwise "Type: message"
      // (the message is a generic sentence unless tracebacks are allowed).
      error.textContent = status.error.public ? status.error.message
        : status.error.type + ': ' + status.error.message;
      error.hidden = false;
      if (status.error.traceback) {
        tb.querySelector('pre').textContent = status.error.traceback;
        tb.hidden = false;
      }
    } else {
      error.hidden = true;
    }
  }

  function poll(widget, delay) {
    var url = widget.getAttribute('data-asyncjob-status');
    fetch(url, { cache: 'no-store', credentials: 'same-origin',
                 headers: { Accept: 'application/json' } })
      .then(function (response) {
        if (response.status === 503) { throw new Error('tracker unavailable'); }
        return response.json();
      })
      .then(function (status) {
        render(widget, status);
        if (FINAL[status.state]) {
          widget.dispatchEvent(new CustomEvent('asyncjob:finished',
                                               { bubbles: true, detail: status }));
        } else {
          window.setTimeout(poll, POLL_MS, widget, POLL_MS);
        }
      })
      .catch(function () {
        // A restart or a tracker outage: say so, keep trying, ever more slowly.
        part(widget, 'state').textContent = 'Status unavailable, retrying';
        var next = Math.min(delay * 2, MAX_BACKOFF_MS);
        window.setTimeout(poll, next, widget, next);
      });
  }

  function scan(root) {
    var widgets = root.querySelectorAll('[data-asyncjob-status]');
    for (var i = 0; i < widgets.length; i++) {
      var widget = widgets[i];
      if (widget.getAttribute('data-asyncjob-polling')) { continue; }
      widget.setAttribute('data-asyncjob-polling', '1');
      if (!FINAL[widget.getAttribute('data-state')]) { poll(widget, POLL_MS); }
    }
  }

  window.tgextAsyncjob = { scan: scan };
  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', function () { scan(document); });
  } else {
    scan(document);
  }
}());
