// The app page: one Socket.IO connection, authenticated by the session
// cookie the browser sends with the handshake. No framework, no build step.
(function () {
  'use strict';

  // How long a server-initiated end stays on screen before we navigate.
  var REDIRECT_DELAY_MS = 3000;
  // Handshake refusals that mean "sign in (again)".
  var SIGN_IN_AGAIN = {
    'Authentication required': 'auth-required',
    'Invalid session': 'invalid-session',
    'Session expired': 'session-expired'
  };
  var GUEST_REVOKED = 'Guest access revoked';

  var statusEl = document.getElementById('status');
  var noticeEl = document.getElementById('notice');
  var ended = false; // the server ended this page's session: no reconnecting
  var connected = false; // a namespace connection is (or was just) up

  function setStatus(text, kind) {
    statusEl.textContent = text;
    statusEl.className = 'status' + (kind ? ' ' + kind : '');
  }

  function showNotice(text, kind) {
    noticeEl.textContent = text;
    noticeEl.className = 'notice ' + (kind || 'warning');
    noticeEl.hidden = false;
  }

  // Stop for good: no automatic reconnection after the server ended us.
  function end() {
    ended = true;
    socket.io.reconnection(false);
    socket.disconnect();
  }

  // Shows `message`, counts down visibly, then goes to `url`.
  function leaveAfter(message, url, where) {
    var left = Math.ceil(REDIRECT_DELAY_MS / 1000);
    function render() {
      showNotice(message + ' Going to ' + where + ' in ' + left + ' s…', 'warning');
    }
    render();
    var timer = setInterval(function () {
      left -= 1;
      if (left <= 0) {
        clearInterval(timer);
        location.assign(url);
      } else {
        render();
      }
    }, 1000);
  }

  // The start page shows the message (sessionStorage, with a query
  // string code as fallback when storage is unavailable).
  function goHomeWith(message) {
    try {
      sessionStorage.setItem('sockgate.notice', message);
    } catch (e) { /* storage disabled: the start page uses the code */ }
    leaveAfter(message, '/?notice=guest-locked', 'the start page');
  }

  function payloadMessage(payload, fallback) {
    return payload && typeof payload.message === 'string' && payload.message
      ? payload.message
      : fallback;
  }

  var socket = io({ withCredentials: true });

  socket.on('connect', function () {
    connected = true;
    noticeEl.hidden = true;
    setStatus('Connected, asking who I am…');
    socket.timeout(5000).emit('whoami', function (err, me) {
      if (err || !me) {
        setStatus('Connected, but whoami got no answer', 'error');
        return;
      }
      setStatus('Connected as ' + me.userId, 'ok');
      document.body.dataset.userId = String(me.userId);
    });
  });

  socket.on('connect_error', function (err) {
    if (ended) return;
    var message = err && err.message ? err.message : String(err);
    var reason = SIGN_IN_AGAIN[message];
    if (reason) {
      end();
      setStatus('Not signed in', 'error');
      location.assign('/login.html?reason=' + reason);
      return;
    }
    if (message === GUEST_REVOKED) {
      end();
      setStatus('Guest access revoked', 'error');
      goHomeWith('Your guest access has been revoked.');
      return;
    }
    // A transport error ("xhr poll error", "xhr post error", "websocket
    // error": what a 403 from the origin allowlist looks like to the
    // client), or the server failing closed ("Service unavailable").
    // Visible, no redirect.
    var detail = typeof err.description === 'number' ? ', HTTP ' + err.description : '';
    setStatus('Not connected', 'error');
    showNotice('Connection refused: the server did not accept this connection (' +
      message + detail + ').', 'error');
    if (!socket.active) {
      // Refused by the server, which the client does not retry by itself.
      setTimeout(function () { if (!ended) socket.connect(); }, 5000);
    }
  });

  // The session was deleted or expired while connected; the server closes
  // the socket right after this event.
  socket.on('session_expired', function (payload) {
    end();
    setStatus('Session ended', 'error');
    leaveAfter(payloadMessage(payload, 'Your session has expired.'),
      '/login.html?reason=session-expired', 'the sign-in page');
  });

  // An admin locked this guest out; the server closes the socket next.
  socket.on('guest:locked', function (payload) {
    end();
    setStatus('Guest access revoked', 'error');
    goHomeWith(payloadMessage(payload, 'Your guest access has been revoked.'));
  });

  socket.on('disconnect', function (reason) {
    // A transport that closes before the namespace connected already
    // showed its connect_error: keep that on screen.
    var was = connected;
    connected = false;
    if (ended || !was) return;
    setStatus('Disconnected (' + reason + '), reconnecting…', 'error');
  });
})();
