from aligngpt_plugin.deepspeed_configs import main

main()
