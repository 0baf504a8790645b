// Runs the chapter's Node FeatureFlags (laid out by the test in CHAPTER_LAYOUT: feature-flags.js with
// config/consul-config.js beside it) against CONSUL_HOST:CONSUL_PORT: prints its flags as JSON when
// initialized and after each update; exits when stdin closes.
const path = require('path');
const ConsulConfig = require(path.join(process.env.CHAPTER_LAYOUT, 'config', 'consul-config.js'));
const { FeatureFlags } = require(path.join(process.env.CHAPTER_LAYOUT, 'feature-flags.js'));

(async () => {
  const config = new ConsulConfig({ serviceName: 'features', environment: 'prod' });
  const flags = new FeatureFlags({ config });
  await flags.initialize();
  const show = (event) => console.log(JSON.stringify({
    event, flags: flags.getAllFlags(), darkMode: flags.isEnabled('dark-mode'),
  }));
  show('initialized');
  config.on('change', () => setImmediate(() => show('changed')));
  process.stdin.on('end', () => { config.close(); process.exit(0); });
  process.stdin.resume();
})().catch((err) => { console.error(err); process.exit(1); });
