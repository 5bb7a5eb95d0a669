// Minimal home page until the dashboard lands: who am I, host health, change password, sign out.
(async () => {
  const { api } = window.FastVM;
  const me = await api('/api/auth/me');
  document.getElementById('who').textContent = `${me.username}${me.is_admin ? ' (admin)' : ''}`;
  document.getElementById('must-change').hidden = !me.must_change_password;

  const health = await fetch('/api/health').then((r) => r.json());
  const list = document.getElementById('health');
  for (const [name, check] of Object.entries(health.checks)) {
    const item = document.createElement('li');
    item.textContent = `${check.ok ? '✔' : '✘'} ${name}: ${check.detail}`;
    list.appendChild(item);
  }

  document.getElementById('logout').addEventListener('click', async () => {
    await api('/api/auth/logout', { method: 'POST' }).catch(() => {});
    localStorage.removeItem('token');
    window.location.href = '/login.html';
  });

  document.getElementById('change-password').addEventListener('submit', async (event) => {
    event.preventDefault();
    const message = document.getElementById('message');
    try {
      const result = await api('/api/auth/change-password', {
        method: 'POST',
        body: {
          current_password: document.getElementById('current').value,
          new_password: document.getElementById('new').value,
        },
      });
      message.textContent = result.message;
      document.getElementById('must-change').hidden = true;
    } catch (err) {
      message.textContent = err.message;
    }
  });
})();
